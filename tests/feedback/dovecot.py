"""A real IMAP server for the bounce-mailbox tests: Debian's dovecot, run by the test itself.

Its own configuration in a temporary folder (nothing of the system's dovecot is used): the
IMAP port (STARTTLS offered) and the IMAPS port on free ports of 127.0.0.1, users in a
passwd-file (each test takes a user of its own, so its mailbox starts empty), mail in Maildirs.
``dovecot -F`` runs in the foreground as a child process and is stopped at the end.
Install it with ``scripts/install-dovecot.sh``.
"""

from __future__ import annotations

import asyncio
import grp
import imaplib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mailpipe.testing.smtpd import Certificate, free_port
from tests.reliability.support import wait_for

DOVECOT = shutil.which("dovecot") or next(
    (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if Path(p).is_file()), None
)

#: Mailbox users created at start: one per test that reads a mailbox.
USERS = 40

_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
# Plain LOGIN is what the loopback tests exercise; the TLS ports are tested separately.
disable_plaintext_auth = no
auth_mechanisms = plain login
# A wrong password is answered at once (the default waits 2 s to slow guessing).
auth_failure_delay = 0
{users}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
mail_location = maildir:{root}/mail/%u/Maildir
service imap-login {{
{login_chroot}  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
"""


def quote(folder: str) -> str:
    """A folder name as an IMAP string (imaplib sends arguments as they are)."""
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Dovecot:
    """A running dovecot: its ports, its CA file, and a way to add users."""

    root: Path
    imap_port: int
    imaps_port: int
    ca_file: Path
    process: subprocess.Popen[bytes]
    passwords: dict[str, str]
    users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, certificate: Certificate) -> Dovecot:
        """Write a configuration and start ``dovecot -F``; returns once both ports listen."""
        assert DOVECOT is not None
        # Not under pytest's temp folder: its 0700 parents would keep dovecot's unprivileged
        # processes (login, mail) out.
        root = Path(tempfile.mkdtemp(prefix="mailpipe-dovecot-"))
        root.chmod(0o755)
        if os.geteuid() == 0:
            # dovecot refuses mail access as root: the mail belongs to nobody.
            user = pwd.getpwnam("nobody")
            uid, gid = user.pw_uid, user.pw_gid
            users = login_chroot = ""
        else:
            # Unprivileged: every dovecot process runs as this user.
            uid, gid = os.getuid(), os.getgid()
            me, group = pwd.getpwuid(uid).pw_name, grp.getgrgid(gid).gr_name
            users = (
                f"default_internal_user = {me}\ndefault_login_user = {me}\n"
                f"default_internal_group = {group}\n"
                # Only root may chroot: the unprivileged processes stay where they are.
                "service anvil {\n  chroot =\n}\n"
            )
            login_chroot = "  chroot =\n"
        (root / "mail").mkdir()
        os.chown(root / "mail", uid, gid)
        # Every user is written before dovecot starts: it re-reads a changed passwd-file at
        # most once a second, so a user added later might not log in yet.
        passwords = {f"bounces-{n:02d}": secrets.token_urlsafe(12) for n in range(USERS)}
        (root / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in passwords.items()))
        imap_port, imaps_port = free_port(), free_port()
        conf = root / "dovecot.conf"
        conf.write_text(
            _CONFIG.format(
                root=root,
                cert=certificate.cert_file,
                key=certificate.key_file,
                uid=uid,
                gid=gid,
                users=users,
                login_chroot=login_chroot,
                imap_port=imap_port,
                imaps_port=imaps_port,
            )
        )
        process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        server = cls(root, imap_port, imaps_port, certificate.cert_file, process, passwords)
        try:
            asyncio.run(
                wait_for(
                    lambda: (
                        process.poll() is not None
                        or (_listening(imap_port) and _listening(imaps_port))
                    ),
                    timeout=30,
                    what=f"dovecot listening on 127.0.0.1:{imap_port} and {imaps_port}",
                )
            )
            if process.poll() is not None:
                raise RuntimeError(f"dovecot did not start:\n{server.log()}")
        except BaseException:
            server.stop()
            raise
        return server

    def log(self) -> str:
        """What dovecot logged (and printed, if it died early)."""
        path = self.root / "dovecot.log"
        logged = path.read_text(errors="replace") if path.exists() else ""
        if self.process.poll() is not None and self.process.stdout is not None:
            logged += self.process.stdout.read().decode(errors="replace")
        return logged

    def stop(self) -> None:
        """Stop dovecot (its master stops its children) and remove its folder."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def add_user(self) -> tuple[str, str]:
        """A mailbox user of its own for one test (empty mailbox); returns (user, password)."""
        unused = [u for u in self.passwords if u not in self.users]
        if not unused:
            raise RuntimeError(f"all {USERS} dovecot test users are taken: raise USERS")
        self.users[unused[0]] = self.passwords[unused[0]]
        return unused[0], self.passwords[unused[0]]

    def client(self, user: str) -> imaplib.IMAP4:
        """A logged-in client of ``user`` (plain, on loopback), to set up and inspect."""
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        client.login(user, self.users[user])
        return client

    def append(self, user: str, *messages: bytes, folder: str = "INBOX") -> None:
        """Deliver messages into ``user``'s folder (IMAP APPEND, unseen)."""
        client = self.client(user)
        try:
            for raw in messages:
                typ, data = client.append(quote(folder), None, None, raw)
                assert typ == "OK", data
        finally:
            client.logout()

    def create_folder(self, user: str, folder: str) -> None:
        """Create a folder in ``user``'s mailbox."""
        client = self.client(user)
        try:
            typ, data = client.create(quote(folder))
            assert typ == "OK", data
        finally:
            client.logout()

    def flags(self, user: str, folder: str = "INBOX") -> list[set[str]]:
        """The lasting flags of each message in the folder, in order (empty list: no message)."""
        client = self.client(user)
        try:
            typ, data = client.select(quote(folder), readonly=True)
            assert typ == "OK", data
            if int(data[0] or 0) == 0:
                return []
            typ, data = client.fetch("1:*", "(FLAGS)")
            assert typ == "OK", data
            found = []
            for line in data:
                text = line.decode() if isinstance(line, bytes) else ""
                inner = text[text.index("FLAGS (") + 7 :].split(")", 1)[0]
                # \Recent only says which session saw the message first: not ours to assert.
                found.append(set(inner.split()) - {r"\Recent"})
            return found
        finally:
            client.logout()

    def unsee(self, user: str, folder: str = "INBOX") -> None:
        """Remove \\Seen from every message (as if the reader crashed before flagging)."""
        client = self.client(user)
        try:
            client.select(quote(folder))
            typ, data = client.store("1:*", "-FLAGS.SILENT", r"(\Seen)")
            assert typ == "OK", data
        finally:
            client.logout()
