/*
 * isobench-probe: round-trip latency of the IPC mechanisms and of TCP, and STREAM.
 *
 *   isobench-probe rtt MECH ITERS [MSG_BYTES]     MECH: pipe unix tcp shm mq sem signal
 *   isobench-probe stream ARRAY_MIB NTIMES
 *   isobench-probe tcp-server ADDR PORT
 *   isobench-probe tcp-rr ADDR PORT ITERS MSG_BYTES
 *
 * Why a program of our own: stress-ng's IPC stressors report bogo-ops per second
 * (throughput of whatever a bogo-op is for that stressor), never the time of one
 * request/response; and its stream stressor gives one bandwidth, not STREAM's four
 * kernels. Each measurement prints one line of key=value pairs on stdout.
 *
 * rtt: a parent and a forked child ping-pong MSG_BYTES; each round trip is timed
 * with CLOCK_MONOTONIC (vDSO, no syscall) as the gap between consecutive stamps,
 * so the samples add up to the timed loop's elapsed time. Both processes run on
 * one CPU (the lowest this process may use): left to the scheduler, the pair
 * lands on one CPU in some runs and on two in others, and the p50 jumps between
 * a context switch (~5 us here) and a cross-CPU wake-up (~40 us in this VM).
 * tcp-rr leaves placement to its caller. Blocking waits in the
 * parent are timed (1 s) so a peer that died is noticed instead of waited for;
 * the child dies with its parent (PR_SET_PDEATHSIG).
 *
 * Exit codes: 0 measured; 1 a call failed (one line: the call and errno text);
 * 2 bad usage (one line naming what is accepted).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <mqueue.h>
#include <sched.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROG "isobench-probe"
#define USAGE                                                                           \
    "usage: " PROG " rtt MECH ITERS [MSG_BYTES] | stream ARRAY_MIB NTIMES"              \
    " | tcp-server ADDR PORT | tcp-rr ADDR PORT ITERS MSG_BYTES"
#define USAGE_RTT "usage: " PROG " rtt MECH ITERS [MSG_BYTES]"
#define USAGE_STREAM "usage: " PROG " stream ARRAY_MIB NTIMES"
#define USAGE_SERVER "usage: " PROG " tcp-server ADDR PORT"
#define USAGE_RR "usage: " PROG " tcp-rr ADDR PORT ITERS MSG_BYTES"
#define MECHS "pipe, unix, tcp, shm, mq, sem, signal"

#define MAX_ITERS 100000000ULL   /* 800 MB of samples */
#define MAX_MSG_BYTES (1U << 20) /* 1 MiB */
#define WAIT_S 1                 /* a parent's blocking wait re-checks its peer this often */
#define CONNECT_RETRY_S 5

enum mech { PIPE, UNIX, TCP, SHM, MQ, SEM, SIG, NMECH };
static const char *const MECH_NAMES[NMECH] = {"pipe", "unix", "tcp", "shm", "mq", "sem", "signal"};

/* ------------------------------------------------------------------ failures */

static pid_t child_pid;     /* the parent's ping-pong peer; killed when the parent fails */
static pid_t owner_pid;     /* the process that removes the SysV semaphore set */
static int sem_id = -1;

static void release(void)
{
    if (sem_id >= 0 && getpid() == owner_pid) {
        semctl(sem_id, 0, IPC_RMID);
        sem_id = -1;
    }
}

static void stop_child(void)
{
    if (child_pid > 0) {
        kill(child_pid, SIGKILL);
        waitpid(child_pid, NULL, 0);
        child_pid = 0;
    }
}

__attribute__((noreturn, format(printf, 1, 2))) static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

/* A runtime failure: one line with the call and errno's text; nothing left behind. */
__attribute__((noreturn)) static void fail(const char *call)
{
    int err = errno;
    stop_child();
    release();
    fprintf(stderr, PROG ": %s: %s\n", call, strerror(err));
    exit(1);
}

__attribute__((noreturn, format(printf, 1, 2))) static void fail_msg(const char *fmt, ...)
{
    va_list ap;
    stop_child();
    release();
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* The parent's view of a child that ended early; a child that failed has said why already. */
__attribute__((noreturn)) static void peer_ended(int status)
{
    child_pid = 0;
    release();
    if (WIFEXITED(status) && WEXITSTATUS(status) == 1)
        exit(1);
    if (WIFSIGNALED(status))
        fail_msg("peer process: killed by signal %d before the last round trip", WTERMSIG(status));
    fail_msg("peer process: exited %d before the last round trip", WEXITSTATUS(status));
}

/* After a timed wait ran out: carry on if the peer lives, otherwise end. */
static void check_peer(int is_parent, pid_t parent)
{
    if (!is_parent) {
        if (getppid() != parent)
            _exit(1);
        return;
    }
    int status;
    pid_t got = waitpid(child_pid, &status, WNOHANG);
    if (got == child_pid)
        peer_ended(status);
    if (got < 0)
        fail("waitpid");
}

static void on_fatal_signal(int sig)
{
    release(); /* semctl and getpid are async-signal-safe system calls */
    _exit(128 + sig);
}

static void on_term_exit0(int sig)
{
    (void)sig;
    _exit(0);
}

/* ------------------------------------------------------------------ arguments */

static unsigned long long parse_number(const char *what, const char *text, unsigned long long min,
                                       unsigned long long max, const char *usage)
{
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || value < min ||
        value > max)
        usage_error("%s must be an integer from %llu to %llu, got '%s'; %s", what, min, max, text,
                    usage);
    return value;
}

static enum mech parse_mech(const char *text)
{
    for (int m = 0; m < NMECH; m++)
        if (strcmp(text, MECH_NAMES[m]) == 0)
            return (enum mech)m;
    usage_error("unknown mechanism '%s'; accepted: " MECHS "; " USAGE_RTT, text);
}

/* ------------------------------------------------------------------ time, I/O */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t done = write(fd, buf, n);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            fail("write");
        }
        buf += done;
        n -= (size_t)done;
    }
}

/* Exactly n bytes; 0 when the peer closed first. */
static int read_exact(int fd, char *buf, size_t n)
{
    while (n > 0) {
        ssize_t got = read(fd, buf, n);
        if (got == 0)
            return 0;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            fail("read");
        }
        buf += got;
        n -= (size_t)got;
    }
    return 1;
}

static void set_nodelay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        fail("setsockopt TCP_NODELAY");
}

/* ------------------------------------------------------------------ one link, two ends */

struct shm_area {
    uint32_t turn; /* the futex word: 1 the child's turn, 2 the parent's */
    char buf[];
};

struct link {
    enum mech mech;
    size_t bytes;
    int is_parent;
    pid_t parent; /* the parent's pid, as the child knows it */
    int rfd, wfd; /* pipe, unix, tcp: this end's descriptors */
    int listen_fd;
    struct sockaddr_in tcp_addr;
    struct shm_area *shm;
    mqd_t mq_req, mq_rep;
    char *msg;
};

static void link_setup(struct link *l)
{
    l->rfd = l->wfd = l->listen_fd = -1;
    switch (l->mech) {
    case PIPE:
    case UNIX:
        break; /* made in link_fork: both ends are fds inherited across fork */
    case TCP: {
        l->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (l->listen_fd < 0)
            fail("socket");
        memset(&l->tcp_addr, 0, sizeof l->tcp_addr);
        l->tcp_addr.sin_family = AF_INET;
        l->tcp_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof l->tcp_addr;
        if (bind(l->listen_fd, (struct sockaddr *)&l->tcp_addr, len) < 0)
            fail("bind 127.0.0.1:0");
        if (listen(l->listen_fd, 1) < 0)
            fail("listen");
        if (getsockname(l->listen_fd, (struct sockaddr *)&l->tcp_addr, &len) < 0)
            fail("getsockname");
        break;
    }
    case SHM:
        l->shm = mmap(NULL, sizeof *l->shm + l->bytes, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (l->shm == MAP_FAILED)
            fail("mmap MAP_SHARED");
        l->shm->turn = 2;
        break;
    case MQ: {
        struct mq_attr attr = {.mq_maxmsg = 1, .mq_msgsize = (long)l->bytes};
        char req[64], rep[64];
        snprintf(req, sizeof req, "/isobench-probe-%d-req", (int)getpid());
        snprintf(rep, sizeof rep, "/isobench-probe-%d-rep", (int)getpid());
        l->mq_req = mq_open(req, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600, &attr);
        if (l->mq_req == (mqd_t)-1)
            fail("mq_open");
        mq_unlink(req); /* the descriptors keep it alive; its name is gone at once */
        l->mq_rep = mq_open(rep, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600, &attr);
        if (l->mq_rep == (mqd_t)-1)
            fail("mq_open");
        mq_unlink(rep);
        break;
    }
    case SEM: {
        owner_pid = getpid();
        sem_id = semget(IPC_PRIVATE, 2, IPC_CREAT | IPC_EXCL | 0600);
        if (sem_id < 0)
            fail("semget");
        unsigned short zero[2] = {0, 0}; /* 0: requests posted, 1: replies posted */
        if (semctl(sem_id, 0, SETALL, zero) < 0)
            fail("semctl SETALL");
        break;
    }
    case SIG: {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigaddset(&set, SIGCHLD); /* the parent waits for either: a dead peer ends the wait */
        if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
            fail("sigprocmask");
        break;
    }
    case NMECH:
        break;
    }
}

/* Fork; each side keeps its own end. Returns in both processes. */
static void link_fork(struct link *l)
{
    int req[2] = {-1, -1}, rep[2] = {-1, -1};
    if (l->mech == PIPE && (pipe2(req, O_CLOEXEC) < 0 || pipe2(rep, O_CLOEXEC) < 0))
        fail("pipe2");
    if (l->mech == UNIX && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, req) < 0)
        fail("socketpair");
    fflush(NULL); /* nothing buffered may be written twice */
    l->parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        fail("fork");
    l->is_parent = pid > 0;
    if (pid > 0) {
        child_pid = pid;
    } else {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != l->parent)
            _exit(1); /* the parent died before prctl */
    }
    switch (l->mech) {
    case PIPE:
        l->wfd = l->is_parent ? req[1] : rep[1];
        l->rfd = l->is_parent ? rep[0] : req[0];
        close(l->is_parent ? req[0] : req[1]);
        close(l->is_parent ? rep[1] : rep[0]);
        break;
    case UNIX:
        l->rfd = l->wfd = l->is_parent ? req[0] : req[1];
        close(l->is_parent ? req[1] : req[0]);
        break;
    case TCP: {
        int fd;
        if (l->is_parent) {
            fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0)
                fail("socket");
            if (connect(fd, (struct sockaddr *)&l->tcp_addr, sizeof l->tcp_addr) < 0)
                fail("connect");
        } else {
            fd = accept4(l->listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0)
                fail("accept");
        }
        close(l->listen_fd);
        set_nodelay(fd);
        l->rfd = l->wfd = fd;
        break;
    }
    default:
        break;
    }
}

static void shm_wait(struct link *l, uint32_t want)
{
    for (;;) {
        uint32_t seen = __atomic_load_n(&l->shm->turn, __ATOMIC_ACQUIRE);
        if (seen == want)
            return;
        struct timespec timeout = {WAIT_S, 0};
        /* Not FUTEX_WAIT_PRIVATE: the word is shared between two processes. */
        if (syscall(SYS_futex, &l->shm->turn, FUTEX_WAIT, seen, &timeout, NULL, 0) < 0) {
            if (errno == ETIMEDOUT)
                check_peer(l->is_parent, l->parent);
            else if (errno != EAGAIN && errno != EINTR)
                fail("futex FUTEX_WAIT");
        }
    }
}

static void shm_pass(struct link *l, uint32_t turn)
{
    __atomic_store_n(&l->shm->turn, turn, __ATOMIC_RELEASE);
    if (syscall(SYS_futex, &l->shm->turn, FUTEX_WAKE, 1, NULL, NULL, 0) < 0)
        fail("futex FUTEX_WAKE");
}

static void mq_get(struct link *l, mqd_t q)
{
    static struct timespec deadline; /* CLOCK_REALTIME; renewed only when it has passed */
    for (;;) {
        ssize_t got = mq_timedreceive(q, l->msg, l->bytes, NULL, &deadline);
        if (got >= 0) {
            if ((size_t)got != l->bytes)
                fail_msg("mq_receive: got %zd bytes, sent %zu", got, l->bytes);
            return;
        }
        if (errno == ETIMEDOUT) {
            check_peer(l->is_parent, l->parent);
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_sec += WAIT_S;
        } else if (errno != EINTR) {
            fail("mq_receive");
        }
    }
}

static void sem_change(struct link *l, unsigned short num, short delta)
{
    struct sembuf op = {.sem_num = num, .sem_op = delta, .sem_flg = 0};
    struct timespec timeout = {WAIT_S, 0};
    /* semtimedop is the same system call as semop with a timeout. */
    while (semtimedop(sem_id, &op, 1, delta < 0 ? &timeout : NULL) < 0) {
        if (errno == EAGAIN)
            check_peer(l->is_parent, l->parent);
        else if (errno == EIDRM && !l->is_parent)
            _exit(1); /* the parent failed or was stopped, and removed the set */
        else if (errno != EINTR)
            fail("semop");
    }
}

/* The parent's side of one round trip: send the request, wait for the reply. */
static void ping(struct link *l)
{
    switch (l->mech) {
    case PIPE:
    case UNIX:
    case TCP:
        write_all(l->wfd, l->msg, l->bytes);
        if (!read_exact(l->rfd, l->msg, l->bytes)) {
            int status;
            if (waitpid(child_pid, &status, 0) == child_pid)
                peer_ended(status);
            fail("waitpid");
        }
        break;
    case SHM:
        memcpy(l->shm->buf, l->msg, l->bytes);
        shm_pass(l, 1);
        shm_wait(l, 2);
        memcpy(l->msg, l->shm->buf, l->bytes);
        break;
    case MQ:
        if (mq_send(l->mq_req, l->msg, l->bytes, 0) < 0)
            fail("mq_send");
        mq_get(l, l->mq_rep);
        break;
    case SEM:
        sem_change(l, 0, 1);
        sem_change(l, 1, -1);
        break;
    case SIG: {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigaddset(&set, SIGCHLD);
        if (kill(child_pid, SIGUSR1) < 0)
            fail("kill SIGUSR1");
        int sig = sigwaitinfo(&set, NULL);
        if (sig == SIGCHLD) {
            int status;
            if (waitpid(child_pid, &status, 0) == child_pid)
                peer_ended(status);
            fail("waitpid");
        }
        if (sig < 0)
            fail("sigwaitinfo");
        break;
    }
    case NMECH:
        break;
    }
}

/* The child's side: wait for a request, answer it. */
static void pong(struct link *l)
{
    switch (l->mech) {
    case PIPE:
    case UNIX:
    case TCP:
        if (!read_exact(l->rfd, l->msg, l->bytes))
            _exit(1); /* the parent is gone */
        write_all(l->wfd, l->msg, l->bytes);
        break;
    case SHM:
        shm_wait(l, 1);
        memcpy(l->msg, l->shm->buf, l->bytes);
        memcpy(l->shm->buf, l->msg, l->bytes);
        shm_pass(l, 2);
        break;
    case MQ:
        mq_get(l, l->mq_req);
        if (mq_send(l->mq_rep, l->msg, l->bytes, 0) < 0)
            fail("mq_send");
        break;
    case SEM:
        sem_change(l, 0, -1);
        sem_change(l, 1, 1);
        break;
    case SIG: {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        if (sigwaitinfo(&set, NULL) < 0)
            fail("sigwaitinfo");
        if (kill(l->parent, SIGUSR1) < 0)
            fail("kill SIGUSR1");
        break;
    }
    case NMECH:
        break;
    }
}

/* ------------------------------------------------------------------ timing and output */

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t warmup_rounds(uint64_t iters)
{
    return iters / 10 < 1000 ? iters / 10 : 1000;
}

/* Nearest-rank percentile of sorted samples. */
static uint64_t percentile(const uint64_t *sorted, uint64_t n, unsigned pct)
{
    uint64_t rank = (n * pct + 99) / 100;
    return sorted[rank > 0 ? rank - 1 : 0];
}

/* Warm up, then ITERS timed round trips through one_round; prints the result line. */
static void timed_rounds(const char *probe, const char *mech, uint64_t iters, size_t bytes,
                         void (*one_round)(struct link *), struct link *l)
{
    uint64_t *ns = malloc(iters * sizeof *ns);
    if (ns == NULL)
        fail("malloc samples");
    for (uint64_t i = 0; i < warmup_rounds(iters); i++)
        one_round(l);
    uint64_t start = now_ns(), prev = start;
    for (uint64_t i = 0; i < iters; i++) {
        one_round(l);
        uint64_t t = now_ns();
        ns[i] = t - prev;
        prev = t;
    }
    uint64_t total = prev - start;
    if (child_pid > 0) {
        int status;
        if (waitpid(child_pid, &status, 0) != child_pid)
            fail("waitpid");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            peer_ended(status);
        child_pid = 0;
    }
    qsort(ns, iters, sizeof *ns, compare_u64);
    printf("probe=%s mech=%s iters=%llu bytes=%zu mean_ns=%.1f p50_ns=%llu p90_ns=%llu"
           " p99_ns=%llu min_ns=%llu max_ns=%llu roundtrips_per_s=%.1f\n",
           probe, mech, (unsigned long long)iters, bytes, (double)total / (double)iters,
           (unsigned long long)percentile(ns, iters, 50),
           (unsigned long long)percentile(ns, iters, 90),
           (unsigned long long)percentile(ns, iters, 99), (unsigned long long)ns[0],
           (unsigned long long)ns[iters - 1], (double)iters * 1e9 / (double)(total ? total : 1));
    free(ns);
    if (fflush(stdout) != 0 || ferror(stdout))
        fail("write stdout");
}

/* ------------------------------------------------------------------ rtt */

/* Both ends on one CPU (inherited across fork); see the header for why. */
static void pin_to_first_cpu(void)
{
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) < 0)
        fail("sched_getaffinity");
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &allowed)) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            if (sched_setaffinity(0, sizeof one, &one) < 0)
                fail("sched_setaffinity");
            return;
        }
    }
}

static int cmd_rtt(int argc, char **argv)
{
    if (argc < 2 || argc > 3)
        usage_error("rtt takes MECH ITERS [MSG_BYTES]; " USAGE_RTT);
    struct link l;
    memset(&l, 0, sizeof l);
    l.mech = parse_mech(argv[0]);
    uint64_t iters = parse_number("ITERS", argv[1], 1, MAX_ITERS, USAGE_RTT);
    int tokens_only = l.mech == SEM || l.mech == SIG;
    if (argc == 3 && tokens_only)
        l.bytes = parse_number("MSG_BYTES (sem and signal carry no payload)", argv[2], 0, 0,
                               USAGE_RTT);
    else if (argc == 3)
        l.bytes = parse_number("MSG_BYTES", argv[2], 1, MAX_MSG_BYTES, USAGE_RTT);
    else
        l.bytes = tokens_only ? 0 : 1;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    pin_to_first_cpu();
    l.msg = malloc(l.bytes ? l.bytes : 1);
    if (l.msg == NULL)
        fail("malloc");
    memset(l.msg, 'x', l.bytes);
    link_setup(&l);
    link_fork(&l);
    if (!l.is_parent) {
        uint64_t rounds = warmup_rounds(iters) + iters;
        for (uint64_t i = 0; i < rounds; i++)
            pong(&l);
        _exit(0);
    }
    timed_rounds("rtt", MECH_NAMES[l.mech], iters, l.bytes, ping, &l);
    release();
    return 0;
}

/* ------------------------------------------------------------------ tcp-server, tcp-rr */

static socklen_t parse_addr(const char *addr, unsigned port, struct sockaddr_storage *out,
                            const char *usage)
{
    memset(out, 0, sizeof *out);
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, addr, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        return sizeof *v4;
    }
    if (inet_pton(AF_INET6, addr, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        return sizeof *v6;
    }
    usage_error("ADDR must be a numeric IPv4 or IPv6 address, got '%s'; %s", addr, usage);
}

static int cmd_tcp_server(int argc, char **argv)
{
    if (argc != 2)
        usage_error("tcp-server takes ADDR PORT; " USAGE_SERVER);
    unsigned port = (unsigned)parse_number("PORT", argv[1], 0, 65535, USAGE_SERVER);
    struct sockaddr_storage sa;
    socklen_t len = parse_addr(argv[0], port, &sa, USAGE_SERVER);

    struct sigaction term;
    memset(&term, 0, sizeof term);
    term.sa_handler = on_term_exit0;
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGINT, &term, NULL);

    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        fail("setsockopt SO_REUSEADDR");
    if (bind(fd, (struct sockaddr *)&sa, len) < 0)
        fail("bind");
    if (listen(fd, 16) < 0)
        fail("listen");
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        fail("getsockname");
    unsigned bound = ntohs(sa.ss_family == AF_INET ? ((struct sockaddr_in *)&sa)->sin_port
                                                   : ((struct sockaddr_in6 *)&sa)->sin6_port);
    printf("listening %s %u\n", argv[0], bound); /* PORT 0: the port the kernel chose */
    if (fflush(stdout) != 0)
        fail("write stdout");

    static char buf[65536];
    for (;;) {
        int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            fail("accept");
        }
        set_nodelay(conn);
        /* Echo what arrives until the peer closes; a reset ends only this connection. */
        for (;;) {
            ssize_t got = read(conn, buf, sizeof buf);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0)
                break;
            ssize_t off = 0;
            while (off < got) {
                ssize_t sent = send(conn, buf + off, (size_t)(got - off), MSG_NOSIGNAL);
                if (sent < 0 && errno == EINTR)
                    continue;
                if (sent < 0)
                    break;
                off += sent;
            }
            if (off < got)
                break;
        }
        close(conn);
    }
}

static int rr_fd = -1;

static void rr_round(struct link *l)
{
    write_all(rr_fd, l->msg, l->bytes);
    if (!read_exact(rr_fd, l->msg, l->bytes)) {
        errno = ECONNRESET;
        fail("read (the server closed the connection)");
    }
}

static int cmd_tcp_rr(int argc, char **argv)
{
    if (argc != 4)
        usage_error("tcp-rr takes ADDR PORT ITERS MSG_BYTES; " USAGE_RR);
    unsigned port = (unsigned)parse_number("PORT", argv[1], 1, 65535, USAGE_RR);
    struct sockaddr_storage sa;
    socklen_t len = parse_addr(argv[0], port, &sa, USAGE_RR);
    uint64_t iters = parse_number("ITERS", argv[2], 1, MAX_ITERS, USAGE_RR);
    struct link l;
    memset(&l, 0, sizeof l);
    l.mech = TCP;
    l.bytes = parse_number("MSG_BYTES", argv[3], 1, MAX_MSG_BYTES, USAGE_RR);
    l.msg = malloc(l.bytes);
    if (l.msg == NULL)
        fail("malloc");
    memset(l.msg, 'x', l.bytes);

    /* The server may still be starting: retry while refused, for up to CONNECT_RETRY_S. */
    uint64_t deadline = now_ns() + CONNECT_RETRY_S * 1000000000ULL;
    for (;;) {
        rr_fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (rr_fd < 0)
            fail("socket");
        if (connect(rr_fd, (struct sockaddr *)&sa, len) == 0)
            break;
        if (errno != ECONNREFUSED || now_ns() >= deadline)
            fail("connect");
        close(rr_fd);
        struct timespec pause = {0, 10 * 1000000};
        nanosleep(&pause, NULL);
    }
    set_nodelay(rr_fd);
    timed_rounds("tcp-rr", "tcp", iters, l.bytes, rr_round, &l);
    close(rr_fd);
    return 0;
}

/* ------------------------------------------------------------------ stream */

#define SCALAR 3.0
#define STREAM_EPSILON 1.e-13 /* STREAM's tolerance for 8-byte doubles */

/*
 * McCalpin's four kernels, one thread. Each is its own non-inlined function over
 * heap arrays whose values are checked afterwards, so no store can be dropped.
 * Loop distribution is off for copy: gcc would turn it into memcpy, whose
 * non-temporal stores for large sizes are not the load/store loop STREAM times.
 */
__attribute__((noinline, optimize("no-tree-loop-distribute-patterns"))) static void
stream_copy(double *restrict c, const double *restrict a, size_t n)
{
    for (size_t j = 0; j < n; j++)
        c[j] = a[j];
}

__attribute__((noinline)) static void stream_scale(double *restrict b, const double *restrict c,
                                                   double s, size_t n)
{
    for (size_t j = 0; j < n; j++)
        b[j] = s * c[j];
}

__attribute__((noinline)) static void stream_add(double *restrict c, const double *restrict a,
                                                 const double *restrict b, size_t n)
{
    for (size_t j = 0; j < n; j++)
        c[j] = a[j] + b[j];
}

__attribute__((noinline)) static void stream_triad(double *restrict a, const double *restrict b,
                                                   const double *restrict c, double s, size_t n)
{
    for (size_t j = 0; j < n; j++)
        a[j] = b[j] + s * c[j];
}

static double abs_d(double x)
{
    return x < 0 ? -x : x;
}

/* STREAM's checkSTREAMresults: the average error of each array against the scalar recurrence. */
static void stream_validate(const double *a, const double *b, const double *c, size_t n,
                            unsigned long long ntimes)
{
    double aj = 1.0, bj = 2.0, cj = 0.0;
    aj = 2.0 * aj;
    for (unsigned long long k = 0; k < ntimes; k++) {
        cj = aj;
        bj = SCALAR * cj;
        cj = aj + bj;
        aj = bj + SCALAR * cj;
    }
    double expect[3] = {aj, bj, cj}, err[3] = {0, 0, 0};
    for (size_t j = 0; j < n; j++) {
        err[0] += abs_d(a[j] - aj);
        err[1] += abs_d(b[j] - bj);
        err[2] += abs_d(c[j] - cj);
    }
    for (int i = 0; i < 3; i++) {
        double relative = err[i] / (double)n / abs_d(expect[i]);
        if (relative > STREAM_EPSILON)
            fail_msg("stream validation: array %c average relative error %.3g exceeds %.0e",
                     "abc"[i], relative, STREAM_EPSILON);
    }
}

static int cmd_stream(int argc, char **argv)
{
    if (argc != 2)
        usage_error("stream takes ARRAY_MIB NTIMES; " USAGE_STREAM);
    unsigned long long array_mib = parse_number("ARRAY_MIB", argv[0], 1, 1 << 20, USAGE_STREAM);
    unsigned long long ntimes = parse_number("NTIMES", argv[1], 2, 100000, USAGE_STREAM);
    size_t n = (size_t)array_mib * 1024 * 1024 / sizeof(double);
    double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    if (a == NULL || b == NULL || c == NULL)
        fail("malloc arrays");
    for (size_t j = 0; j < n; j++) { /* the first touch, as in STREAM */
        a[j] = 1.0;
        b[j] = 2.0;
        c[j] = 0.0;
    }
    for (size_t j = 0; j < n; j++)
        a[j] = 2.0 * a[j];

    static const char *const names[4] = {"copy", "scale", "add", "triad"};
    /* Bytes each kernel moves, counted as STREAM does: 2 arrays for copy/scale, 3 for add/triad. */
    double bytes[4] = {2.0 * (double)(n * sizeof(double)), 2.0 * (double)(n * sizeof(double)),
                       3.0 * (double)(n * sizeof(double)), 3.0 * (double)(n * sizeof(double))};
    double min_s[4], sum_s[4] = {0, 0, 0, 0};
    for (unsigned long long k = 0; k < ntimes; k++) {
        double took[4];
        uint64_t t0 = now_ns();
        stream_copy(c, a, n);
        uint64_t t1 = now_ns();
        stream_scale(b, c, SCALAR, n);
        uint64_t t2 = now_ns();
        stream_add(c, a, b, n);
        uint64_t t3 = now_ns();
        stream_triad(a, b, c, SCALAR, n);
        uint64_t t4 = now_ns();
        took[0] = (double)(t1 - t0) / 1e9;
        took[1] = (double)(t2 - t1) / 1e9;
        took[2] = (double)(t3 - t2) / 1e9;
        took[3] = (double)(t4 - t3) / 1e9;
        if (k == 0)
            continue; /* STREAM discards the first repetition */
        for (int i = 0; i < 4; i++) {
            if (k == 1 || took[i] < min_s[i])
                min_s[i] = took[i];
            sum_s[i] += took[i];
        }
    }
    stream_validate(a, b, c, n, ntimes);

    printf("probe=stream array_mib=%llu ntimes=%llu", array_mib, ntimes);
    for (int i = 0; i < 4; i++)
        printf(" %s_mb_s=%.1f", names[i], bytes[i] / 1e6 / min_s[i]);
    for (int i = 0; i < 4; i++)
        printf(" %s_avg_mb_s=%.1f", names[i], bytes[i] / 1e6 / (sum_s[i] / (double)(ntimes - 1)));
    printf("\n");
    free(a);
    free(b);
    free(c);
    if (fflush(stdout) != 0 || ferror(stdout))
        fail("write stdout");
    return 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a closed peer is an EPIPE error, reported as such */
    if (argc < 2)
        usage_error("no mode given; accepted: rtt, stream, tcp-server, tcp-rr; " USAGE);
    const char *mode = argv[1];
    if (strcmp(mode, "rtt") == 0)
        return cmd_rtt(argc - 2, argv + 2);
    if (strcmp(mode, "stream") == 0)
        return cmd_stream(argc - 2, argv + 2);
    if (strcmp(mode, "tcp-server") == 0)
        return cmd_tcp_server(argc - 2, argv + 2);
    if (strcmp(mode, "tcp-rr") == 0)
        return cmd_tcp_rr(argc - 2, argv + 2);
    usage_error("unknown mode '%s'; accepted: rtt, stream, tcp-server, tcp-rr; " USAGE, mode);
}
