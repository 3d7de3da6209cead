/*
 * isobench-agent: the guest end of isobench's VM agent channel.
 *
 * The guest's /init execs this as PID 1. It opens the virtio-serial port named
 * org.isobench.agent.0 (found through /sys/class/virtio-ports/<port>/name, the
 * node is /dev/<port>: there is no udev in the guest), says READY with the
 * guest's CLOCK_BOOTTIME at that moment, then serves one request at a time.
 * `isobench-agent --fd N` serves an inherited fd instead (host-side tests).
 *
 * Protocol (harness/vm/protocol.py is the host side and documents the same):
 *   frame   = u32 length (big-endian, 1..MAX_FRAME) + payload
 *   payload = u32 kind + the kind's fields, in order, nothing after them
 *   fields  : u32 / u64 big-endian; bytes = u32 length + data;
 *             strv = u32 count + count * bytes
 *   guest -> host
 *     READY  1  u32 protocol version, u64 boottime_ns when first ready
 *     PONG   3  u64 boottime_ns now
 *     RESULT 5  u32 how (0 exited, 1 killed by a signal, 2 timed out and killed),
 *               u32 code (exit status or signal number), u64 wall_ns
 *               (CLOCK_MONOTONIC around fork/exec/wait), u32 flags (bit 0: stdout
 *               truncated, bit 1: stderr truncated), bytes stdout, bytes stderr
 *     DATA   7  bytes content
 *     OK     9  (nothing)
 *     ERROR 10  u32 errno (0: a protocol error), bytes message
 *   host -> guest
 *     PING      2  (nothing)                                -> PONG
 *     RUN       4  strv argv, strv env, bytes cwd, u32 timeout_ms (0: none) -> RESULT
 *     FETCH     6  bytes path                               -> DATA
 *     POWEROFF  8  (nothing)             -> OK, then sync and power off
 *     HELLO    11  (nothing)                                -> READY (again)
 * Any request can get ERROR instead. A frame that cannot be parsed gets ERROR
 * and the agent carries on; a bad length also drops the input queued before its
 * ERROR is sent, since the next frame boundary is unknown. When the host disconnects, the agent
 * waits for the next connection and says READY again (the same boottime); a host
 * that reconnects too fast for the guest to see the gap asks with HELLO instead.
 * RUN: stdin is /dev/null, the command leads its own process group, and that
 * group is SIGKILLed on timeout and when the command exits (no stray daemons
 * between benchmarks). An exec failure is exit code 127 (not found) or 126, with
 * the reason on stderr, as a shell does.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "org.isobench.agent.0"
#define PROTOCOL_VERSION 1u
#define MAX_FRAME (64u << 20)
#define MAX_OUTPUT (8u << 20) /* per stream; the rest is read and dropped */
#define MAX_FETCH (MAX_FRAME - 1024u)
#define MAX_LIST 4096u
#define PORT_WAIT_MS 10000
#define DRAIN_GRACE_MS 200
#define DEFAULT_PATH "/usr/sbin:/usr/bin:/sbin:/bin"

enum { READY = 1, PING = 2, PONG = 3, RUN = 4, RESULT = 5, FETCH = 6, DATA = 7,
       POWEROFF = 8, OK = 9, ERROR = 10, HELLO = 11 };

struct buf { unsigned char *p; size_t len, cap; };
struct rd { const unsigned char *p; size_t len, off; int bad; };

static int port_fd = -1;
static int fd_mode; /* serving an inherited fd: EOF means the host is gone for good */
static uint64_t ready_boot_ns;

static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("isobench-agent: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* PID 1 must not exit (the kernel panics); it powers the guest off, so the host sees QEMU end. */
static void die(const char *why)
{
    say("fatal: %s", why);
    sync();
    if (getpid() == 1)
        reboot(RB_POWER_OFF);
    exit(1);
}

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- encoding ---------------------------------------------------------- */

static void reserve(struct buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p)
        die("out of memory");
    b->p = p;
    b->cap = cap;
}

static void put_raw(struct buf *b, const void *data, size_t n)
{
    reserve(b, n);
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
    unsigned char x[4] = { v >> 24, v >> 16, v >> 8, v };
    put_raw(b, x, 4);
}

static void put_u64(struct buf *b, uint64_t v)
{
    put_u32(b, (uint32_t)(v >> 32));
    put_u32(b, (uint32_t)v);
}

static void put_bytes(struct buf *b, const void *data, size_t n)
{
    put_u32(b, (uint32_t)n);
    put_raw(b, data, n);
}

static uint32_t get_u32(struct rd *r)
{
    if (r->bad || r->len - r->off < 4) {
        r->bad = 1;
        return 0;
    }
    const unsigned char *x = r->p + r->off;
    r->off += 4;
    return (uint32_t)x[0] << 24 | (uint32_t)x[1] << 16 | (uint32_t)x[2] << 8 | x[3];
}

/* A byte string as a fresh NUL-terminated copy; NULL (and r->bad) when short or holding a NUL. */
static char *get_str(struct rd *r)
{
    uint32_t n = get_u32(r);
    if (r->bad || r->len - r->off < n || memchr(r->p + r->off, 0, n)) {
        r->bad = 1;
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (!s)
        die("out of memory");
    memcpy(s, r->p + r->off, n);
    s[n] = 0;
    r->off += n;
    return s;
}

static void free_strv(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static char **get_strv(struct rd *r)
{
    uint32_t n = get_u32(r);
    if (r->bad || n > MAX_LIST) {
        r->bad = 1;
        return NULL;
    }
    char **v = calloc((size_t)n + 1, sizeof *v);
    if (!v)
        die("out of memory");
    for (uint32_t i = 0; i < n; i++) {
        v[i] = get_str(r);
        if (!v[i]) {
            free_strv(v);
            return NULL;
        }
    }
    return v;
}

/* ---- the port ---------------------------------------------------------- */

static int write_full(int fd, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 0 when all n bytes arrived, 1 on end of file (the host went away), -1 on error. */
static int read_full(int fd, void *data, size_t n)
{
    unsigned char *p = data;
    while (n) {
        ssize_t got = read(fd, p, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0)
            return 1;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

static void send_frame(const struct buf *payload)
{
    unsigned char len[4] = { payload->len >> 24, payload->len >> 16, payload->len >> 8, payload->len };
    /* A host that left mid-reply gets nothing more; the next connection starts with READY. */
    if (write_full(port_fd, len, 4) == 0)
        write_full(port_fd, payload->p, payload->len);
}

static void reply_error(struct buf *out, uint32_t err, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    out->len = 0;
    put_u32(out, ERROR);
    put_u32(out, err);
    put_bytes(out, msg, strlen(msg));
}

static void send_ready(void)
{
    struct buf b = { 0 };
    put_u32(&b, READY);
    put_u32(&b, PROTOCOL_VERSION);
    put_u64(&b, ready_boot_ns);
    /* On a virtio port this write blocks until a host end is connected. */
    send_frame(&b);
    free(b.p);
}

/* The /dev node of the virtio-serial port called PORT_NAME, waiting for the driver to name it. */
static int open_port(void)
{
    for (int waited_ms = 0; waited_ms < PORT_WAIT_MS; waited_ms += 10) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char path[512], name[128] = { 0 };
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                continue;
            ssize_t n = read(fd, name, sizeof name - 1);
            close(fd);
            if (n > 0 && name[n - 1] == '\n')
                name[n - 1] = 0;
            if (strcmp(name, PORT_NAME) != 0)
                continue;
            snprintf(path, sizeof path, "/dev/%s", e->d_name);
            closedir(d);
            fd = open(path, O_RDWR | O_CLOEXEC);
            if (fd < 0)
                say("open %s: %s", path, strerror(errno));
            return fd;
        }
        if (d)
            closedir(d);
        usleep(10000);
    }
    return -1;
}

/* After a bad length: drop what is queued now, since the next frame boundary is unknown. */
static void drop_pending(void)
{
    unsigned char junk[4096];
    struct pollfd p = { .fd = port_fd, .events = POLLIN };
    while (poll(&p, 1, 50) == 1 && (p.revents & POLLIN) && read(port_fd, junk, sizeof junk) > 0)
        ;
}

/* ---- RUN --------------------------------------------------------------- */

struct capture { int fd; struct buf data; int truncated; };

/* Read what is there; 1 at end of file. Beyond MAX_OUTPUT, bytes are read and dropped. */
static int pump(struct capture *c)
{
    unsigned char chunk[65536];
    ssize_t n = read(c->fd, chunk, sizeof chunk);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : 1;
    if (n == 0)
        return 1;
    size_t room = MAX_OUTPUT - c->data.len;
    if ((size_t)n > room) {
        c->truncated = 1;
        n = (ssize_t)room;
    }
    put_raw(&c->data, chunk, (size_t)n);
    return 0;
}

static void child(char **argv, char **env, const char *cwd, int out, int err)
{
    setpgid(0, 0);
    signal(SIGPIPE, SIG_DFL);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0)
        dup2(null, 0);
    dup2(out, 1);
    dup2(err, 2);
    if (chdir(cwd) != 0) {
        dprintf(2, "isobench-agent: chdir %s: %s\n", cwd, strerror(errno));
        _exit(126);
    }
    execvpe(argv[0], argv, env);
    int e = errno;
    dprintf(2, "isobench-agent: exec %s: %s\n", argv[0], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

/* The request's env on top of a PATH default, so a bare command name resolves as in a shell. */
static char **merged_env(char **env)
{
    size_t n = 0;
    int has_path = 0;
    while (env[n]) {
        has_path |= strncmp(env[n], "PATH=", 5) == 0;
        n++;
    }
    char **v = calloc(n + 2, sizeof *v);
    if (!v)
        die("out of memory");
    size_t i = 0;
    if (!has_path)
        v[i++] = "PATH=" DEFAULT_PATH;
    for (size_t j = 0; j < n; j++)
        v[i++] = env[j];
    return v;
}

static void do_run(struct rd *r, struct buf *out)
{
    char **argv = get_strv(r);
    char **env = r->bad ? NULL : get_strv(r);
    char *cwd = r->bad ? NULL : get_str(r);
    uint32_t timeout_ms = get_u32(r);
    if (r->bad || r->off != r->len || !argv[0]) {
        reply_error(out, 0, "RUN: malformed request (expected strv argv (not empty), strv env, bytes cwd, u32 timeout_ms)");
        goto done;
    }
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
        reply_error(out, (uint32_t)errno, "RUN: pipe: %s", strerror(errno));
        goto done;
    }
    char **envp = merged_env(env);
    uint64_t t0 = now_ns(CLOCK_MONOTONIC);
    pid_t pid = fork();
    if (pid == 0)
        child(argv, envp, cwd, po[1], pe[1]);
    free(envp);
    close(po[1]);
    close(pe[1]);
    if (pid < 0) {
        reply_error(out, (uint32_t)errno, "RUN: fork: %s", strerror(errno));
        close(po[0]);
        close(pe[0]);
        goto done;
    }
    setpgid(pid, pid); /* also here: the group must exist before a timeout kills it */
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    struct capture cap[2] = { { po[0], { 0 }, 0 }, { pe[0], { 0 }, 0 } };
    int open_fds = 2, reaped = 0, how = 0, code = 0, status = 0;
    uint64_t t1 = 0, deadline = timeout_ms ? t0 + (uint64_t)timeout_ms * 1000000u : 0;
    uint64_t drain_until = 0;
    while (!reaped || open_fds) {
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        if (!reaped && deadline && now >= deadline && how != 2) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            how = 2;
        }
        if (reaped && now >= drain_until)
            break; /* something outside the group still holds the pipes */
        struct pollfd p[3];
        int n = 0, wait_ms = -1;
        for (int i = 0; i < 2; i++)
            if (cap[i].fd >= 0)
                p[n++] = (struct pollfd){ .fd = cap[i].fd, .events = POLLIN };
        if (!reaped && pidfd >= 0)
            p[n++] = (struct pollfd){ .fd = pidfd, .events = POLLIN };
        uint64_t until = reaped ? drain_until : (how != 2 ? deadline : 0);
        if (until)
            wait_ms = (int)((until - now) / 1000000u) + 1;
        if (!reaped && pidfd < 0)
            wait_ms = wait_ms < 0 || wait_ms > 5 ? 5 : wait_ms; /* no pidfd: poll waitpid */
        if (poll(p, (nfds_t)n, wait_ms) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++)
            for (int c = 0; c < 2; c++)
                if (p[i].fd == cap[c].fd && p[i].revents && pump(&cap[c])) {
                    close(cap[c].fd);
                    cap[c].fd = -1;
                    open_fds--;
                }
        if (!reaped && waitpid(pid, &status, WNOHANG) == pid) {
            t1 = now_ns(CLOCK_MONOTONIC);
            reaped = 1;
            kill(-pid, SIGKILL); /* whatever the command left running in its group */
            drain_until = t1 + DRAIN_GRACE_MS * 1000000ull;
        }
    }
    for (int c = 0; c < 2; c++)
        if (cap[c].fd >= 0)
            close(cap[c].fd);
    if (pidfd >= 0)
        close(pidfd);
    if (how != 2) {
        how = WIFSIGNALED(status) ? 1 : 0;
        code = WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status);
    } else {
        code = SIGKILL;
    }
    out->len = 0;
    put_u32(out, RESULT);
    put_u32(out, (uint32_t)how);
    put_u32(out, (uint32_t)code);
    put_u64(out, t1 - t0);
    put_u32(out, (uint32_t)(cap[0].truncated | cap[1].truncated << 1));
    put_bytes(out, cap[0].data.p, cap[0].data.len);
    put_bytes(out, cap[1].data.p, cap[1].data.len);
    free(cap[0].data.p);
    free(cap[1].data.p);
done:
    free_strv(argv);
    free_strv(env);
    free(cwd);
}

/* ---- FETCH, PING, POWEROFF --------------------------------------------- */

static void do_fetch(struct rd *r, struct buf *out)
{
    char *path = get_str(r);
    if (r->bad || r->off != r->len) {
        reply_error(out, 0, "FETCH: malformed request (expected bytes path)");
        free(path);
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        reply_error(out, (uint32_t)errno, "FETCH %s: %s", path, strerror(errno));
        free(path);
        return;
    }
    out->len = 0;
    put_u32(out, DATA);
    put_u32(out, 0); /* the length, set below: /proc files have no size to stat */
    size_t start = out->len;
    for (;;) {
        reserve(out, 65536);
        ssize_t n = read(fd, out->p + out->len, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            reply_error(out, (uint32_t)errno, "FETCH %s: read: %s", path, strerror(errno));
            break;
        }
        if (n == 0) {
            uint32_t size = (uint32_t)(out->len - start);
            unsigned char *x = out->p + start - 4;
            x[0] = size >> 24; x[1] = size >> 16; x[2] = size >> 8; x[3] = size;
            break;
        }
        out->len += (size_t)n;
        if (out->len - start > MAX_FETCH) {
            reply_error(out, (uint32_t)EFBIG, "FETCH %s: larger than %u bytes", path, MAX_FETCH);
            break;
        }
    }
    close(fd);
    free(path);
}

static void power_off(void)
{
    sync();
    if (getpid() != 1)
        exit(0); /* not a guest's init (a host-side test): never touch the host's power */
    umount2("/scratch", 0);
    sync();
    reboot(RB_POWER_OFF);
    die("reboot(RB_POWER_OFF) returned");
}

static void serve(void)
{
    struct buf out = { 0 };
    unsigned char *frame = NULL;
    send_ready();
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ; /* PID 1 adopts orphans: reap them between requests */
        unsigned char len_be[4] = { 0 };
        int rc = read_full(port_fd, len_be, 4);
        uint32_t len = (uint32_t)len_be[0] << 24 | (uint32_t)len_be[1] << 16 | (uint32_t)len_be[2] << 8 | len_be[3];
        if (rc == 0 && (len == 0 || len > MAX_FRAME)) {
            drop_pending(); /* before replying: what the host sends after the reply is kept */
            reply_error(&out, 0, "frame length %u; accepted: 1..%u", len, MAX_FRAME);
            send_frame(&out);
            continue;
        }
        free(frame);
        frame = rc == 0 ? malloc(len) : NULL;
        if (rc == 0 && !frame)
            die("out of memory");
        if (rc == 0)
            rc = read_full(port_fd, frame, len);
        if (rc != 0) {
            if (fd_mode)
                exit(0);
            /* The host closed its end (or is not there yet): wait, then greet the next one. */
            say("host end closed (read %s); waiting for the next connection", rc < 0 ? strerror(errno) : "EOF");
            usleep(20000);
            send_ready();
            continue;
        }
        struct rd r = { frame, len, 0, 0 };
        uint32_t kind = get_u32(&r);
        out.len = 0;
        switch (kind) {
        case PING:
            if (r.off != r.len) {
                reply_error(&out, 0, "PING: unexpected fields");
                break;
            }
            put_u32(&out, PONG);
            put_u64(&out, now_ns(CLOCK_BOOTTIME));
            break;
        case HELLO:
            if (r.off != r.len) {
                reply_error(&out, 0, "HELLO: unexpected fields");
                break;
            }
            put_u32(&out, READY);
            put_u32(&out, PROTOCOL_VERSION);
            put_u64(&out, ready_boot_ns);
            break;
        case RUN:
            do_run(&r, &out);
            break;
        case FETCH:
            do_fetch(&r, &out);
            break;
        case POWEROFF:
            put_u32(&out, OK);
            send_frame(&out);
            power_off();
            break;
        default:
            reply_error(&out, 0, "unknown request kind %u; accepted: PING 2, RUN 4, FETCH 6, POWEROFF 8, HELLO 11", kind);
        }
        send_frame(&out);
    }
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a vanished host is an error return, not death of PID 1 */
    setenv("PATH", DEFAULT_PATH, 0); /* execvpe searches the caller's PATH */
    if (argc == 3 && strcmp(argv[1], "--fd") == 0) {
        port_fd = atoi(argv[2]);
        fd_mode = 1;
    } else if (argc == 1) {
        port_fd = open_port();
        if (port_fd < 0)
            die("no virtio-serial port named " PORT_NAME " (is virtio_console loaded and the channel defined?)");
    } else {
        fprintf(stderr, "usage: isobench-agent [--fd N]\n");
        return 2;
    }
    ready_boot_ns = now_ns(CLOCK_BOOTTIME);
    say("ready on fd %d at boottime %llu ns", port_fd, (unsigned long long)ready_boot_ns);
    serve();
    return 0;
}
