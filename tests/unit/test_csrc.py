"""isobench's own C programs: compiled once per source and compiler, static, runnable anywhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.errors import EnvironmentError_
from harness.image.csrc import compile_programs

HELLO = '#include <stdio.h>\nint main(int c, char **v) { printf("hi %d\\n", c); return 3; }\n'


def test_compiles_each_source_to_a_static_binary_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.c").write_text(HELLO)
    cache = tmp_path / "cache"
    [program] = compile_programs(cache, src)
    assert program.name == "hello"
    proc = subprocess.run([program.binary, "x"], capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout) == (3, "hi 2\n")
    ldd = subprocess.run(["ldd", program.binary], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr
    mtime = program.binary.stat().st_mtime_ns
    [again] = compile_programs(cache, src)
    assert again.binary == program.binary and again.binary.stat().st_mtime_ns == mtime

    (src / "hello.c").write_text(HELLO.replace("return 3", "return 4"))
    [changed] = compile_programs(cache, src)
    assert changed.binary != program.binary
    assert subprocess.run([changed.binary], check=False).returncode == 4


def test_two_compiles_give_the_same_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.c").write_text(HELLO)
    [one] = compile_programs(tmp_path / "a", src)
    [two] = compile_programs(tmp_path / "b", src)
    assert one.binary.read_bytes() == two.binary.read_bytes()


def test_a_compile_error_names_the_file_and_leaves_no_binary(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.c").write_text("int main(void) { return nope; }\n")
    cache = tmp_path / "cache"
    with pytest.raises(EnvironmentError_, match=r"compiling broken\.c failed"):
        compile_programs(cache, src)
    assert list(cache.iterdir()) == []
