"""The mount daemon's support modules, on real parts: sd_notify over a real AF_UNIX socket,
the mount table with real tmpfs and FUSE mounts (a stale one made by SIGKILLing a pyfuse3
process), the double-fork detach in a subprocess under a subreaper (exit codes, no zombie),
sysfs tuning of a real FUSE mount read back, and the daemon's log formats."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobfs.errors import MountError
from blobfs.fuse import _log, _notify, _sysfs
from blobfs.fuse._detach import ReadyPipe
from blobfs.fuse._mountpoint import (
    check_mountpoint,
    enclosing_mount,
    is_mounted,
    lazy_unmount,
    mount_info,
    parse_mountinfo,
    unmount,
    wait_until_mounted,
)
from tests._fuse_support import NotifyListener, needs_fuse, needs_root, umount_all

REPO = Path(__file__).resolve().parent.parent


# --- sd_notify --------------------------------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def listener(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NotifyListener]:
    """A listener on a socket file or an abstract name, set as ``$NOTIFY_SOCKET``."""
    sock = NotifyListener(tmp_path / "notify" if request.param == "path" else None)
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    monkeypatch.delenv("SYSTEMD_EXEC_PID", raising=False)
    yield sock
    sock.close()


def test_notify_without_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert _notify.notify("READY=1") is False
    assert _notify.notify_ready("up") is False
    assert _notify.notify_stopping() is False


def test_notify_ready_with_status(listener: NotifyListener) -> None:
    assert _notify.notify_ready("mounted reg/x:v1\nat /mnt") is True
    states, pid = listener.receive()
    # The newline is folded: it would otherwise end STATUS= and start a bogus assignment.
    assert states == ["READY=1", "STATUS=mounted reg/x:v1 at /mnt"]
    assert pid == os.getpid()


def test_notify_stopping_status_and_reloading(listener: NotifyListener) -> None:
    assert _notify.notify_status("x" * 5000)
    assert _notify.notify_stopping()
    assert _notify.notify_reloading("re-reading credentials")
    status, _ = listener.receive()
    assert len(status) == 1
    assert status[0].startswith("STATUS=xxx")
    assert len(status[0]) <= len("STATUS=") + 1024
    assert status[0].endswith("...")
    assert listener.receive()[0] == ["STOPPING=1"]
    reloading, _ = listener.receive()
    assert reloading[0] == "RELOADING=1"
    usec = int(reloading[1].removeprefix("MONOTONIC_USEC="))
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 10_000_000
    assert reloading[2] == "STATUS=re-reading credentials"


def test_notify_adds_mainpid_when_not_the_started_process(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMD_EXEC_PID", str(os.getpid()))
    assert _notify.notify("READY=1")
    assert listener.receive()[0] == ["READY=1"]
    # A detached daemon: systemd started another PID (the exited parent).
    monkeypatch.setenv("SYSTEMD_EXEC_PID", "1")
    assert _notify.notify("READY=1")
    assert listener.receive()[0] == [f"MAINPID={os.getpid()}", "READY=1"]


def test_notify_to_a_missing_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="blobfs.fuse._notify")
    for address in (str(tmp_path / "gone"), "@blobfs-test-nobody-listens", "vsock:2:9"):
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert _notify.notify_ready() is False
    assert sum("NOTIFY_SOCKET" in r.message or "failed" in r.message for r in caplog.records) == 3
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_notify_rejects_malformed_states(listener: NotifyListener) -> None:
    for bad in (("READY",), ("STATUS=a\nREADY=1",), ()):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            _notify.notify(*bad)
    assert not listener.pending(timeout=0.1)


# --- the mount table --------------------------------------------------------------------------

MOUNTINFO_SAMPLE = (
    b"22 27 0:21 / /proc rw,relatime shared:13 - proc proc rw\n"
    b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
    b"88 27 0:52 / /mnt/with\\040space\\011tab\\012nl\\134bs rw,nosuid,nodev,relatime "
    b"shared:40 master:2 - fuse.blobfs reg.example:5000/team/data:v1 "
    b"ro,user_id=0,group_id=0,allow_other\n"
    b"garbage line without separator\n"
    b"\n"
    b"89 88 0:53 /sub /mnt/d rw - tmpfs src\\040with\\040space rw,size=4k\n"
)


def test_parse_mountinfo_decodes_escapes_and_optional_fields() -> None:
    mounts = parse_mountinfo(MOUNTINFO_SAMPLE)
    assert [m.mount_id for m in mounts] == [22, 27, 88, 89]  # the garbage line is skipped
    fuse = mounts[2]
    assert fuse.mountpoint == "/mnt/with space\ttab\nnl\\bs"
    assert (fuse.major, fuse.minor, fuse.dev) == (0, 52, "0:52")
    assert fuse.fstype == "fuse.blobfs"
    assert fuse.is_fuse
    assert fuse.source == "reg.example:5000/team/data:v1"
    assert fuse.options == ("rw", "nosuid", "nodev", "relatime")
    assert fuse.super_options == ("ro", "user_id=0", "group_id=0", "allow_other")
    assert fuse.parent_id == 27
    assert fuse.root == "/"
    assert mounts[3].root == "/sub"
    assert mounts[3].source == "src with space"
    assert not mounts[3].is_fuse
    assert not mounts[1].is_fuse
    assert "fuse.blobfs 'reg.example:5000/team/data:v1' (rw,nosuid,nodev" in fuse.describe()


@contextlib.contextmanager
def tmpfs_at(path: Path, source: str = "blobfs-test") -> Iterator[Path]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", source, str(path)], check=True)
    try:
        yield path
    finally:
        umount_all(path)


@needs_root
def test_mount_table_of_a_real_tmpfs_with_odd_names(tmp_path: Path) -> None:
    mp = tmp_path / "a dir\twith\nodd\\chars"
    mp.mkdir()
    assert not is_mounted(str(mp))
    assert mount_info(str(mp)) is None
    with tmpfs_at(mp, source="src with space"):
        info = mount_info(str(mp))
        assert info is not None
        assert is_mounted(str(mp) + "/")
        assert info.fstype == "tmpfs"
        assert info.source == "src with space"
        assert info.mountpoint == str(mp)
        st = os.stat(mp)
        assert (info.major, info.minor) == (os.major(st.st_dev), os.minor(st.st_dev))
        # Relative spelling and a symbolic link in the parent name the same mount point.
        link = tmp_path / "link"
        link.symlink_to(tmp_path)
        assert is_mounted(str(link / mp.name))
        assert is_mounted(os.path.relpath(mp))
        inner = mp / "x"
        inner.mkdir()
        outer = enclosing_mount(str(inner))
        assert outer is not None
        assert outer.mountpoint == str(mp)
        with pytest.raises(MountError, match="is not a FUSE mount: tmpfs"):
            unmount(str(mp))
    assert not is_mounted(str(mp))
    with pytest.raises(MountError, match="is not mounted"):
        unmount(str(mp))


def test_check_mountpoint_missing_or_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(MountError, match=r"mountpoint .*/nope does not exist$"):
        check_mountpoint(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(MountError, match=r"mountpoint .*/file is not a directory$"):
        check_mountpoint(str(tmp_path / "file"))
    with pytest.raises(MountError, match=r"/file/sub does not exist \(a parent is not a dir"):
        check_mountpoint(str(tmp_path / "file" / "sub"))
    check_mountpoint(str(tmp_path))  # a plain directory is fine


@needs_root
def test_check_mountpoint_refuses_a_live_mount_and_names_it(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with tmpfs_at(mp, source="somebody-else"):
        with pytest.raises(MountError) as caught:
            check_mountpoint(str(mp))
        message = str(caught.value)
        assert message.startswith(f"{mp} is already mounted: tmpfs 'somebody-else' (")
        assert f"blobfs umount {mp}" in message
        assert is_mounted(str(mp))  # a live mount is never touched


# --- real FUSE mounts ---------------------------------------------------------------------------

# A minimal pyfuse3 file system: an empty, read-only root directory. Prints "mounted" once
# the kernel mount exists (the daemon's loop answers from then on).
TINY_FUSE = textwrap.dedent(
    """
    import errno, os, stat, sys
    import pyfuse3, trio

    class Ops(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            if inode != pyfuse3.ROOT_INODE:
                raise pyfuse3.FUSEError(errno.ENOENT)
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
            return a

        async def lookup(self, parent, name, ctx=None):
            raise pyfuse3.FUSEError(errno.ENOENT)

    if len(sys.argv) > 2:
        os._exit(int(sys.argv[2]))  # die before mounting
    options = set(pyfuse3.default_options) | {"fsname=tiny-source", "subtype=tinytest", "ro"}
    pyfuse3.init(Ops(), sys.argv[1], options)
    print("mounted", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    """
)


@contextlib.contextmanager
def tiny_fuse(mountpoint: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """Run TINY_FUSE on ``mountpoint``; always kills, reaps and lazily unmounts after."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TINY_FUSE, str(mountpoint), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        umount_all(mountpoint)


def _started(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "mounted\n", proc.stderr.read() if proc.stderr else ""


@needs_fuse
@pytest.mark.timeout(60)
def test_wait_until_mounted_a_live_fuse_mount(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with tiny_fuse(mp) as proc:
        wait_until_mounted(str(mp), 30, lambda: proc.poll() is None, fstype="fuse.tinytest")
        info = mount_info(str(mp))
        assert info is not None
        assert info.is_fuse
        assert info.source == "tiny-source"
        assert os.stat(mp).st_mode & 0o777 == 0o755  # answered by the tiny daemon
        with pytest.raises(MountError, match=r"is already mounted: fuse\.tinytest 'tiny-source'"):
            check_mountpoint(str(mp))
        # Only a mount of the awaited type counts.
        with pytest.raises(MountError, match=r"was not ready after 0.2 s"):
            wait_until_mounted(str(mp), 0.2, lambda: True, fstype="fuse.other")
        unmount(str(mp))
        assert proc.wait(timeout=30) == 0  # the daemon's loop ends with the unmount
    assert not is_mounted(str(mp))


@needs_fuse
@pytest.mark.timeout(60)
def test_wait_until_mounted_fails_fast_when_the_daemon_dies(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with tiny_fuse(mp, "3") as proc:
        start = time.monotonic()
        with pytest.raises(MountError, match=r"daemon exited before the mount at .* was ready"):
            wait_until_mounted(str(mp), 60, lambda: proc.poll() is None)
        assert time.monotonic() - start < 30  # long before the 60 s timeout
    with pytest.raises(MountError, match=r"the mount at .*/never was not ready after 0.1 s"):
        wait_until_mounted(str(tmp_path / "never"), 0.1, lambda: True)


@needs_fuse
@pytest.mark.timeout(60)
def test_a_stale_fuse_mount_is_detected_and_cleaned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    with tiny_fuse(mp) as proc:
        _started(proc)
        wait_until_mounted(str(mp), 30, lambda: proc.poll() is None)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # stat is still answered from the kernel's attribute cache (300 s here); statfs and
        # listing reach the daemon and fail: "Transport endpoint is not connected".
        assert os.stat(mp).st_ino == 1
        with pytest.raises(OSError, match="Transport endpoint is not connected") as dead:
            os.statvfs(mp)
        assert dead.value.errno == errno.ENOTCONN
        assert is_mounted(str(mp))
        # Inside the dead mount: explained (with the command), not cleaned: not ours.
        with pytest.raises(MountError, match=rf"lies inside a dead FUSE mount at {mp} .*-u -z"):
            check_mountpoint(str(mp / "sub"))
        caplog.set_level(logging.WARNING, logger="blobfs.fuse._mountpoint")
        check_mountpoint(str(mp))
        assert not is_mounted(str(mp))
        assert os.path.isdir(mp)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "stale FUSE mount (fuse.tinytest 'tiny-source'" in warnings[0].getMessage()


@needs_root
def test_lazy_unmount_failure_names_both_commands(tmp_path: Path) -> None:
    with pytest.raises(MountError) as caught:
        lazy_unmount(str(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"cannot unmount {tmp_path}: ")
    assert "fusermount3" in message
    assert "umount" in message
    assert "; " in message


@needs_fuse
@pytest.mark.timeout(60)
def test_tune_mount_on_a_real_fuse_mount(tmp_path: Path) -> None:
    mounted_fusectl = not is_mounted(_sysfs.FUSECTL_DIR) and _sysfs.ensure_fusectl()
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        with tiny_fuse(mp) as proc:
            wait_until_mounted(str(mp), 30, lambda: proc.poll() is None)
            before = _sysfs.mount_tuning(str(mp))
            assert before is not None
            assert before.read_ahead_kb is not None
            assert before.read_ahead_kb != 1536
            _sysfs.tune_mount(str(mp), read_ahead_kb=1536, max_background=64)
            after = _sysfs.mount_tuning(str(mp))
            assert after is not None
            assert after.read_ahead_kb == 1536
            st = os.stat(mp)
            bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
            assert (bdi / "read_ahead_kb").read_text().strip() == "1536"
            if is_mounted(_sysfs.FUSECTL_DIR):
                assert (after.max_background, after.congestion_threshold) == (64, 48)
    finally:
        if mounted_fusectl:
            subprocess.run(["umount", _sysfs.FUSECTL_DIR], check=False)


def test_tune_mount_leaves_a_non_fuse_path_alone(tmp_path: Path) -> None:
    st = os.stat(tmp_path)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    before = bdi.read_text() if bdi.exists() else None
    _sysfs.tune_mount(str(tmp_path), read_ahead_kb=4, max_background=1)  # must not raise
    _sysfs.tune_mount(str(tmp_path / "missing"), read_ahead_kb=4, max_background=None)
    assert (bdi.read_text() if bdi.exists() else None) == before
    assert _sysfs.mount_tuning(str(tmp_path)) is None


# --- detach -------------------------------------------------------------------------------------

# Runs detach(); the daemon writes "PID PPID SID" to a file, then does what MODE says.
DETACH_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from blobfs.fuse._detach import detach

    mode, info = sys.argv[1], sys.argv[2]
    print("before detach", flush=True)
    pipe = detach()
    with open(info, "w") as f:
        f.write(f"{os.getpid()} {os.getppid()} {os.getsid(0)} {os.getcwd()}")
    if mode == "ready":
        pipe.ready()
        print("after ready: must go to /dev/null", flush=True)
        time.sleep(0.3)
    elif mode == "ready-log":
        pipe.ready(log_path=info + ".log")
        print("after ready: into the log", flush=True)
        print("and stderr too", file=sys.stderr, flush=True)
    elif mode == "fail":
        pipe.fail("cannot resolve reg/x:v1:\\n  404 manifest unknown")
        pipe.ready()  # too late: ignored
        sys.exit(1)
    elif mode == "crash":
        raise RuntimeError("boom in the daemon")
    """
)

# Becomes a child subreaper (prctl), runs DETACH_CHILD, then reaps every orphan that was
# re-parented to it: the daemon, and any zombie the double fork leaked.
SUBREAPER = textwrap.dedent(
    """
    import ctypes, json, os, subprocess, sys, time
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    done = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]],
                          capture_output=True, text=True, timeout=60)
    reaped, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            reaped.append([pid, os.waitstatus_to_exitcode(status)])
        else:
            time.sleep(0.01)
    print(json.dumps({"rc": done.returncode, "out": done.stdout, "err": done.stderr,
                      "reaped": reaped, "parent": os.getpid()}))
    """
)


def _run_detach(tmp_path: Path, mode: str) -> tuple[dict[str, object], list[str]]:
    info = tmp_path / f"{mode}.info"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SUBREAPER, DETACH_CHILD, mode, str(info)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result, info.read_text().split(" ") if info.exists() else []


@pytest.mark.timeout(120)
def test_detach_ready_exits_0_and_leaves_no_zombie(tmp_path: Path) -> None:
    result, (pid, ppid, sid, cwd) = _run_detach(tmp_path, "ready")
    assert result["rc"] == 0
    assert result["out"] == "before detach\n"  # nothing after ready: stdout is /dev/null
    assert result["err"] == ""
    # Only the daemon was left for the subreaper to reap, and it exited cleanly: the
    # intermediate child was reaped by the original process (no zombie anywhere).
    assert result["reaped"] == [[int(pid), 0]]
    # Its own session, led by the (gone) intermediate child: the daemon is no session leader,
    # so it can never acquire a controlling terminal. Its parent is that child, or the
    # subreaper once the child exited.
    assert int(sid) not in (int(pid), result["parent"])
    assert int(ppid) in (int(sid), result["parent"])
    assert cwd == "/"


@pytest.mark.timeout(120)
def test_detach_ready_keeps_logging_into_a_log_file(tmp_path: Path) -> None:
    result, (pid, *_) = _run_detach(tmp_path, "ready-log")
    assert (result["rc"], result["out"], result["err"]) == (0, "before detach\n", "")
    assert result["reaped"] == [[int(pid), 0]]
    log = (tmp_path / "ready-log.info.log").read_text()
    assert log == "after ready: into the log\nand stderr too\n"


@pytest.mark.timeout(120)
def test_detach_fail_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    result, (pid, *_) = _run_detach(tmp_path, "fail")
    assert result["rc"] == 1
    assert result["err"] == "blobfs: error: cannot resolve reg/x:v1: 404 manifest unknown\n"
    assert result["reaped"] == [[int(pid), 1]]


@pytest.mark.timeout(120)
def test_detach_crash_before_reporting_exits_1(tmp_path: Path) -> None:
    result, (pid, *_) = _run_detach(tmp_path, "crash")
    assert result["rc"] == 1
    err = str(result["err"])
    # The daemon's traceback (its stderr is still the caller's), then the parent's verdict.
    assert "RuntimeError: boom in the daemon" in err
    assert err.endswith("blobfs: error: daemon exited before the mount was ready\n")
    assert result["reaped"] == [[int(pid), 1]]


def test_ready_pipe_reports_once(tmp_path: Path) -> None:
    r, w = os.pipe()
    pipe = ReadyPipe(w)
    assert not pipe.reported
    pipe.fail("first\nline")
    pipe.fail("second")
    pipe.ready()
    assert pipe.reported
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"fail first line\n"


# --- logging ------------------------------------------------------------------------------------

LOG_CHILD = textwrap.dedent(
    """
    import logging, sys
    from blobfs.fuse._log import setup_daemon_logging
    setup_daemon_logging(sys.argv[1], debug=sys.argv[2] == "debug")
    log = logging.getLogger("blobfs.fuse.test")
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")
    logging.getLogger("httpx").info("GET http://x 200")
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("handler failed")
    log.critical("critical line")
    """
)


def _log_lines(tmp_path: Path, level: str, debug: bool, journal: bool) -> list[str]:
    out = tmp_path / f"stderr-{level}-{debug}-{journal}"
    with open(out, "wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        # A JOURNAL_STREAM naming another file must not switch the format.
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino if journal else st.st_ino + 1}"
        subprocess.run(
            [sys.executable, "-c", LOG_CHILD, level, "debug" if debug else "no"],
            stderr=f,
            env=env,
            check=True,
            timeout=60,
        )
    return out.read_text().splitlines()


def test_journal_stream_gets_priority_prefixes(tmp_path: Path) -> None:
    lines = _log_lines(tmp_path, "INFO", debug=False, journal=True)
    assert lines[:3] == [
        "<6>blobfs.fuse.test: info line",
        "<4>blobfs.fuse.test: warning line",
        "<3>blobfs.fuse.test: handler failed",
    ]
    # Every traceback line keeps the record's priority; no timestamps anywhere.
    assert lines[3] == "<3>Traceback (most recent call last):"
    assert "<3>KeyError: 'k'" in lines
    assert lines[-1] == "<2>blobfs.fuse.test: critical line"
    assert all(re.match(r"<[2-7]>", line) for line in lines)
    assert not any("GET http" in line or "debug line" in line for line in lines)


def test_stderr_lines_are_timestamped_and_debug_shows_all(tmp_path: Path) -> None:
    lines = _log_lines(tmp_path, "warning", debug=True, journal=False)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} blobfs\[\d+\] "
    assert re.fullmatch(stamp + r"DEBUG blobfs.fuse.test: debug line", lines[0])
    assert any(re.fullmatch(stamp + r"INFO httpx: GET http://x 200", line) for line in lines)
    assert not any(line.startswith("<") for line in lines)
    quiet = _log_lines(tmp_path, "warning", debug=False, journal=False)
    assert re.fullmatch(stamp + r"WARNING blobfs.fuse.test: warning line", quiet[0])


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    blobfs = logging.getLogger("blobfs")
    saved = (list(root.handlers), root.level, blobfs.level)
    yield
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[1])
    blobfs.setLevel(saved[2])


def _daemon_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, _log._MARK, False)]


@pytest.mark.usefixtures("restore_logging")
def test_invalid_log_level_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"invalid log level 'loud': choose one of debug, info"):
        _log.setup_daemon_logging("loud", debug=False)
    assert _log.parse_level(" Error ") == logging.ERROR


@pytest.mark.usefixtures("restore_logging")
def test_use_syslog_sends_to_dev_log_style_socket(tmp_path: Path) -> None:
    _log.setup_daemon_logging("info", debug=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(tmp_path / "log"))
        syslog.settimeout(10)
        assert _log.use_syslog(str(tmp_path / "log"))
        assert len(_daemon_handlers()) == 1  # the stderr handler was replaced
        logging.getLogger("blobfs.fuse.test").warning("served %d reads", 3)
        logging.getLogger("blobfs.fuse.test").debug("not at info")
        # <facility daemon (3) * 8 + warning (4)>ident, message, NUL.
        expected = f"<28>blobfs[{os.getpid()}]: WARNING blobfs.fuse.test: served 3 reads\0"
        assert syslog.recv(4096).decode() == expected
        syslog.settimeout(0.2)
        with pytest.raises(TimeoutError):
            syslog.recv(4096)
    assert not _log.use_syslog(str(tmp_path / "no-syslog-here"))
    assert [type(h) for h in _daemon_handlers()] == [logging.NullHandler]


def test_syslog_priorities() -> None:
    levels = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
    assert [_log.syslog_priority(level) for level in levels] == [7, 6, 4, 3, 2]
