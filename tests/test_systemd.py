"""systemd integration: the unit files checked by ``systemd-analyze verify``, and the service's
own commands run the way systemd runs them (this machine's PID 1 is not systemd).

The "fake systemd" here reads ``systemd/blobfs@.service``, expands its specifiers and
environment variables by systemd's rules (``${VAR}`` one word, a lone ``$VAR`` split at
whitespace, ``$$`` a dollar), gives the daemon a ``$NOTIFY_SOCKET`` (a real AF_UNIX datagram
socket with credentials on, as systemd has it) and a ``$JOURNAL_STREAM``, and checks the sd_notify
protocol a real ``Type=notify`` service must follow: READY=1 from the main PID only once the
mount answers, STOPPING=1 on SIGTERM, a clean unmount, and the ExecStopPost clean-up of a
killed daemon. The example fstab line of docs/fstab.md is mounted for real with ``mount -T``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from blobfs.fuse._mountpoint import is_mounted, mount_info, wait_until_mounted
from tests._fuse_support import NotifyListener, needs_fuse, reap, subreaper, umount_all

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
SERVICE = UNITS / "blobfs@.service"
EXAMPLES = [UNITS / "mnt-data.mount", UNITS / "mnt-data.automount"]
BINARY = "/usr/local/bin/blobfs"  # what scripts/setup.sh links, and the units name
SAMPLE = REPO / "blobfs" / "_sample"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="LOUD SKIP: systemd-analyze is not installed; the unit files are NOT verified",
)


# --- systemd-analyze verify -------------------------------------------------------------------


def _verify(directory: Path, names: list[str]) -> tuple[int, list[str]]:
    """Run ``systemd-analyze verify`` on units in ``directory``; the lines about OUR units.

    systemd-analyze also loads the units ours depend on (network-online.target,
    remote-fs.target...) and may complain about those on a given machine: those lines are not
    ours. A line is ours when it names one of our unit files or the directory holding them.
    """
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        # --man=no: a missing man page on a slim machine is not an error in the unit.
        [SYSTEMD_ANALYZE, "verify", "--man=no", *(str(directory / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (done.stdout + done.stderr).splitlines()
    markers = [str(directory), *names]
    ours = [line for line in lines if any(m in line for m in markers)]
    return done.returncode, ours


def _unit_dir(tmp_path: Path, *, tamper: str | None = None) -> tuple[Path, list[str]]:
    """Our units copied to a directory, with an instance of the template to verify."""
    directory = tmp_path / "units"
    directory.mkdir()
    for unit in [SERVICE, *EXAMPLES]:
        text = unit.read_text()
        if not os.access(BINARY, os.X_OK):
            # Not set up here (scripts/setup.sh makes the link): verify would only repeat
            # that; test_units_name_the_linked_binary checks the path itself.
            text = text.replace(BINARY, sys.executable)
        if tamper is not None and unit == SERVICE:
            text = text.replace("[Service]\n", f"[Service]\n{tamper}\n")
        (directory / unit.name).write_text(text)
    instance = "blobfs@mnt-data.service"
    (directory / instance).symlink_to(SERVICE.name)
    return directory, [instance, *(u.name for u in EXAMPLES)]


@needs_analyze
@pytest.mark.timeout(180)
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    directory, names = _unit_dir(tmp_path)
    rc, ours = _verify(directory, names)
    assert ours == [], "\n".join(ours)
    if rc != 0:
        pytest.fail(f"systemd-analyze verify exited {rc} without naming our units")


@needs_analyze
@pytest.mark.timeout(180)
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The filter above must not hide our own mistakes."""
    directory, names = _unit_dir(
        tmp_path, tamper="NotifyAcess=main\nSystemCallFilter=~@no-such-group"
    )
    _, ours = _verify(directory, names)
    assert any("Unknown key" in line and "NotifyAcess" in line for line in ours), ours
    assert any("@no-such-group" in line for line in ours), ours


def test_units_name_the_linked_binary() -> None:
    starts = [v for s, k, v in unit_entries(SERVICE) if (s, k) == ("Service", "ExecStart")]
    assert len(starts) == 1
    assert starts[0].startswith(f"{BINARY} mount --foreground ")
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert f'ln -sfn "$target" {BINARY}' in setup


def _filter_group(name: str) -> set[str]:
    """The system calls in a systemd syscall group, nested groups expanded."""
    assert SYSTEMD_ANALYZE is not None
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for raw in out.splitlines()[1:]:  # the first line is the group's own name
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        calls |= _filter_group(line) if line.startswith("@") else {line}
    return calls


@needs_analyze
@needs_fuse
@pytest.mark.skipif(shutil.which("strace") is None, reason="LOUD SKIP: strace is not installed")
@pytest.mark.timeout(180)
def test_the_daemon_makes_no_system_call_the_unit_denies(tmp_path: Path, archive: Path) -> None:
    """SystemCallFilter= of the unit, against every call a real mount makes under strace."""
    (line,) = [v for s, k, v in unit_entries(SERVICE) if k == "SystemCallFilter"]
    assert line.startswith("~"), "an allow list would need a different check"
    denied = set().union(*(_filter_group(group) for group in line[1:].split()))
    assert {"settimeofday", "ptrace", "init_module", "reboot"} <= denied
    mp = tmp_path / "mnt"
    mp.mkdir()
    trace = tmp_path / "trace"
    argv = [sys.executable, "-m", "blobfs.cli", "mount", "--foreground", str(archive), str(mp)]
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(trace), *argv],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_mounted(str(mp), 120, lambda: tracer.poll() is None)
        for path in sorted(mp.rglob("*")):  # lookups, getattr, readdir, open, read, release
            if path.is_file():
                path.read_bytes()
        os.listxattr(mp)
        os.statvfs(mp)
        daemon = int(trace.read_text().split(None, 1)[0])  # the traced command's PID
        os.kill(daemon, signal.SIGTERM)  # the stop path: STOPPING=1, unmount, exit
        assert tracer.wait(timeout=60) == 0
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        umount_all(mp)
    used = set(re.findall(r"^\d+ +(?:<\.\.\. )?([a-z_0-9]+)[( ]", trace.read_text(), re.M))
    assert {"mount", "umount2", "read", "write"} <= used  # the trace is complete
    assert used & denied == set()


# --- a fake systemd -----------------------------------------------------------------------------


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment in a unit file, in order."""
    entries = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        assert not line.endswith("\\"), "continuation lines are not emulated here"
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def expand_specifiers(text: str, specifiers: dict[str, str]) -> str:
    # An unknown specifier raises KeyError: the emulation must be extended, not guessed.
    return re.sub(r"%.", lambda m: specifiers[m.group()], text)


def expand_command(line: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """(prefix flags, argv) of an Exec*= line, after specifier expansion."""
    flags = re.match(r"[-@:+!]*", line)
    assert flags is not None
    argv: list[str] = []
    for word in shlex.split(line[flags.end() :]):
        lone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if lone:  # "$VAR" as a word of its own: split at whitespace, maybe into nothing
            argv.extend(shlex.split(env.get(lone[1], "")))
        else:  # "${VAR}" anywhere: exactly its value; "$$": a dollar; "$VAR" in a word: kept
            argv.append(
                re.sub(r"\$\{(\w+)\}|\$\$", lambda m: env.get(m[1], "") if m[1] else "$", word)
            )
    return flags.group(), argv


def read_env_file(path: Path) -> dict[str, str]:
    """The assignments of an EnvironmentFile= (KEY=VALUE lines, comments, optional quotes)."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


@dataclass
class FakeSystemd:
    """Runs one instance of blobfs@.service the way systemd would, minus the cgroup."""

    mountpoint: Path
    env_file: Path
    cache_root: Path
    journal: Path
    listener: NotifyListener
    main: subprocess.Popen[bytes] | None = None
    settings: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The instance name systemctl would be given, and %f derived back from it.
        instance = _escape("--path", str(self.mountpoint))
        self.specifiers = {
            "%f": _escape("--unescape", "--path", instance),
            "%i": instance,
            "%C": str(self.cache_root),
            "%%": "%",
        }
        assert self.specifiers["%f"] == str(self.mountpoint)
        self.settings = [
            (s, k, expand_specifiers(v, self.specifiers)) for s, k, v in unit_entries(SERVICE)
        ]

    def values(self, key: str) -> list[str]:
        return [v for s, k, v in self.settings if s == "Service" and k == key]

    def environment(self, **extra: str) -> dict[str, str]:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        env["LANG"] = "C.UTF-8"
        for assignment in self.values("Environment"):
            key, _, value = assignment.partition("=")
            env[key] = value
        (env_file,) = self.values("EnvironmentFile")
        assert env_file == f"/etc/blobfs/{self.specifiers['%i']}.env"
        env.update(read_env_file(self.env_file))  # instead of /etc/blobfs/...
        # The code under test is this checkout (the unit runs /usr/local/bin/blobfs).
        env["PYTHONPATH"] = str(REPO)
        env.update(extra)
        return env

    def argv(self, key: str, env: dict[str, str]) -> tuple[str, list[str]]:
        (line,) = self.values(key)
        flags, argv = expand_command(line, env)
        if argv[0] == BINARY:
            argv = [sys.executable, "-m", "blobfs.cli", *argv[1:]]
        return flags, argv

    def start(self) -> list[str]:
        """ExecStartPre, then ExecStart; returns the READY=1 message (fails if none)."""
        env = self.environment()
        for line in self.values("ExecStartPre"):
            flags, argv = expand_command(line, env)
            rc = subprocess.run(argv, env=env, check=False, timeout=60).returncode
            assert rc == 0 or "-" in flags
        with open(self.journal, "ab") as journal:
            st = os.fstat(journal.fileno())
            env = self.environment(
                NOTIFY_SOCKET=self.listener.address, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"
            )
            _, argv = self.argv("ExecStart", env)
            # systemd exports the PID it started as SYSTEMD_EXEC_PID; "exec" keeps sh's PID.
            argv = ["sh", "-c", 'SYSTEMD_EXEC_PID=$$ exec "$@"', "sh", *argv]
            self.main = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=journal)
        ready = self.expect("READY=1")
        assert not any(s.startswith("MAINPID=") for s in ready), "the main PID is not forked"
        return ready

    def expect(self, state: str, timeout: float = 60) -> list[str]:
        """The next notification holding ``state``; every one must come from the main PID."""
        assert self.main is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listener.pending(timeout=0.1):
                states, pid = self.listener.receive()
                assert pid == self.main.pid, "NotifyAccess=main would drop this message"
                if state in states:
                    return states
            elif self.main.poll() is not None:
                pytest.fail(f"the daemon exited ({self.main.returncode}): {self.log()}")
        pytest.fail(f"no {state} within {timeout} s: {self.log()}")

    def stop_post(self, service_result: str) -> int:
        """Run ExecStopPost= with the SERVICE_RESULT systemd would set; its exit status."""
        env = self.environment(SERVICE_RESULT=service_result)
        flags, argv = self.argv("ExecStopPost", env)
        assert flags == "-"  # a failure there must not fail the unit
        return subprocess.run(argv, env=env, timeout=60, check=False).returncode

    def log(self) -> str:
        return self.journal.read_text(errors="replace") if self.journal.exists() else ""

    def kill(self) -> None:
        if self.main is not None and self.main.poll() is None:
            self.main.kill()
            self.main.wait(timeout=30)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("archive") / "sample"
    subprocess.run(
        [sys.executable, "-m", "blobfs.cli", "create", str(SAMPLE), str(dest)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dest


def _escape(*args: str) -> str:
    if shutil.which("systemd-escape") is None:
        pytest.skip("LOUD SKIP: systemd-escape is not installed; the service is NOT exercised")
    done = subprocess.run(["systemd-escape", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def fake_systemd(tmp_path: Path, archive: Path) -> Iterator[FakeSystemd]:
    mountpoint = tmp_path / "srv" / "data"  # created by ExecStartPre
    env_file = tmp_path / "instance.env"
    env_file.write_text(
        "# as /etc/blobfs/<instance>.env\n"
        f'BLOBFS_SOURCE="{archive}"\n'
        "BLOBFS_OPTIONS=-o log_level=info -o read_ahead_kb=512\n"
    )
    listener = NotifyListener()
    systemd = FakeSystemd(mountpoint, env_file, tmp_path / "cache", tmp_path / "journal", listener)
    try:
        yield systemd
    finally:
        systemd.kill()
        listener.close()
        umount_all(mountpoint)


@needs_fuse
@pytest.mark.timeout(180)
def test_service_start_ready_reload_stop(fake_systemd: FakeSystemd) -> None:
    mp = fake_systemd.mountpoint
    assert not mp.exists()
    ready = fake_systemd.start()
    # READY=1 only once the mount answers: the files are there the moment it arrives.
    assert sorted(os.listdir(mp)) == sorted(os.listdir(SAMPLE))
    assert any(s.startswith("STATUS=serving ") for s in ready), ready
    info = mount_info(str(mp))
    assert info is not None
    assert info.fstype == "fuse.blobfs"
    assert {"ro", "nosuid", "nodev"} <= set(info.options)
    main = fake_systemd.main
    assert main is not None
    # ExecReload: SIGHUP re-reads credentials and keeps serving.
    main.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert main.poll() is None
    assert sorted(os.listdir(mp)) == sorted(os.listdir(SAMPLE))
    # systemctl stop: SIGTERM (KillSignal=), STOPPING=1, unmounted, exit 0.
    main.send_signal(signal.SIGTERM)
    fake_systemd.expect("STOPPING=1")
    assert main.wait(timeout=60) == 0
    assert not is_mounted(str(mp))
    assert fake_systemd.stop_post("success") == 0  # nothing left to clean
    # stderr was the "journal": priority prefixes, no timestamps.
    lines = fake_systemd.log().splitlines()
    assert lines, "the daemon logged nothing"
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert any(line.startswith("<6>") and "serving" in line for line in lines)


@needs_fuse
@pytest.mark.timeout(180)
def test_killed_daemon_is_cleaned_up_before_restart(fake_systemd: FakeSystemd) -> None:
    mp = fake_systemd.mountpoint
    fake_systemd.start()
    fake_systemd.kill()  # SIGKILL: no STOPPING=1, no unmount
    assert is_mounted(str(mp))
    with pytest.raises(OSError, match="Transport endpoint is not connected"):
        os.listdir(mp)
    # ExecStopPost (Result=signal): the dead mount goes.
    assert fake_systemd.stop_post("signal") == 0
    assert not is_mounted(str(mp))
    # Restart=on-failure; killed again, this time without ExecStopPost: the daemon itself
    # removes the dead mount at start, with a warning, and comes up.
    fake_systemd.start()
    fake_systemd.kill()
    assert is_mounted(str(mp))
    fake_systemd.start()
    assert sorted(os.listdir(mp)) == sorted(os.listdir(SAMPLE))
    assert "<4>" in fake_systemd.log()
    assert "stale FUSE mount" in fake_systemd.log()


@needs_fuse
@pytest.mark.timeout(180)
def test_detached_daemon_tells_systemd_its_pid(tmp_path: Path, archive: Path) -> None:
    """Without --foreground (Type=notify with NotifyAccess=all), READY=1 carries MAINPID=."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    listener = NotifyListener()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": listener.address}
    blobfs = f"{shlex.quote(sys.executable)} -m blobfs.cli"
    # $$: the PID systemd would have started (and exported as SYSTEMD_EXEC_PID).
    script = f"SYSTEMD_EXEC_PID=$$ exec {blobfs} mount {shlex.quote(str(archive))} {mp}"
    daemon = 0
    try:
        with subreaper():
            started = subprocess.Popen(["sh", "-c", script], env=env)
            assert started.wait(timeout=120) == 0  # returns once the mount answers
            states, daemon = listener.receive()
            assert daemon != started.pid
            assert states[0] == f"MAINPID={daemon}"
            assert "READY=1" in states
            assert sorted(os.listdir(mp)) == sorted(os.listdir(SAMPLE))
            os.kill(daemon, signal.SIGTERM)
            states, sender = listener.receive()
            assert (states, sender) == ([f"MAINPID={daemon}", "STOPPING=1"], daemon)
            assert reap(daemon) == 0
            daemon = 0
            assert not is_mounted(str(mp))
    finally:
        if daemon:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon, signal.SIGKILL)
        listener.close()
        umount_all(mp)


# --- fstab ------------------------------------------------------------------------------------


def fstab_example() -> list[str]:
    """The six fields of the example fstab line in docs/fstab.md."""
    for line in (REPO / "docs" / "fstab.md").read_text().splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[2] == "fuse.blobfs" and fields[1] == "/mnt/data":
            return fields
    raise AssertionError("no '/mnt/data fuse.blobfs' fstab line in docs/fstab.md")


def test_fstab_example_has_the_documented_options() -> None:
    options = fstab_example()[3].split(",")
    for option in ("ro", "_netdev", "nofail", "x-systemd.automount"):
        assert option in options


def _children_serving(mountpoint: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and os.fsencode(mountpoint) in cmdline:
            pids.append(int(entry))
    return pids


def _root_path_blobfs() -> str | None:
    """The ``blobfs`` mount.fuse3 would run (it searches sh's default PATH), if ours."""
    found = shutil.which("blobfs", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
    if found is None or not os.path.realpath(found).startswith(str(REPO) + os.sep):
        return None
    return found


@needs_fuse
@pytest.mark.timeout(180)
def test_fstab_example_mounts_through_mount_8(tmp_path: Path, archive: Path) -> None:
    if _root_path_blobfs() is None:
        pytest.skip(
            "LOUD SKIP: mount.fuse3 would not run this checkout's blobfs: "
            f"{BINARY} is not linked into {REPO}/.venv (run scripts/setup.sh)"
        )
    mp = tmp_path / "data"
    mp.mkdir()
    _, _, fstype, options, dump, passno = fstab_example()
    options = re.sub(r"cache_dir=[^,]*", f"cache_dir={tmp_path / 'cache'}", options)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{archive} {mp} {fstype} {options} {dump} {passno}\n")
    try:
        with subreaper():
            subprocess.run(["mount", "-T", str(fstab), str(mp)], check=True, timeout=120)
            # mount(8) returned: the mount answers, served by a detached daemon.
            assert sorted(os.listdir(mp)) == sorted(os.listdir(SAMPLE))
            info = mount_info(str(mp))
            assert info is not None
            assert info.fstype == "fuse.blobfs"
            assert info.source == str(archive)
            assert {"ro", "nosuid", "nodev"} <= set(info.options)
            daemons = _children_serving(mp)
            assert len(daemons) == 1
            subprocess.run(["umount", str(mp)], check=True, timeout=60)
            assert reap(daemons[0]) == 0
    finally:
        umount_all(mp)
