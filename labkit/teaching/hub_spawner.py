"""The class's JupyterHub pieces: who may sign up, and how a student's server starts and ends.

labs/jupyterhub_config.py names these two classes; `labkit class start` (labkit.teaching.hub)
writes the class file they read (``class.json`` in the state folder: the roster with each
login's slot, the instructor, where the homes and the exchange are).

- `ClassAuthenticator`: NativeAuthenticator (passwords stored hashed with bcrypt in the hub's
  database), where only the roster's logins and the instructor can sign up. A student sets
  their password at first login (the sign-up page); the instructor can set anyone's
  (``/hub/change-password/LOGIN``).
- `ClassSpawner`: a LocalProcessSpawner whose servers run as root (loading BPF needs it), in
  the student's own folder ``STATE/home/LOGIN`` with the released lessons copied in, with
  ``LABKIT_STUDENT`` set to the login's slot. When a server stops (the student's "Stop my
  server", the idle culler, the hub's shutdown) its slot's testbeds, pins and leftover
  processes are undone.

This is cooperative isolation: every server is root, and a student could reach the others'
files and namespaces. The hub keeps students out of each other's servers; it cannot keep a
root process out of anything.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Unicode

from labkit.teaching import hub


class ClassLoginHandler(LoginHandler):
    """NativeAuthenticator 1.3's login page as JupyterHub 6 calls it: 1.3 renders the page
    with a signature JupyterHub 6 no longer uses (``sync``) and times logins with the
    handler's ``statsd``, which JupyterHub 6 removed; a failed login would be a server error."""

    def _render(self, login_error=None, username=None, sync=False, **ignored):
        return self.render_template(
            "native-login.html",
            sync=sync,
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url), {"next": self.get_argument("next", "")}
            ),
        )

    async def post(self):
        data = {arg: self.get_argument(arg, strip=False) for arg in self.request.arguments}
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
        else:
            self.set_status(403)
            self.finish(await self._render(login_error="Invalid username or password.", username=data.get("username")))


class ClassAuthenticator(NativeAuthenticator):
    """NativeAuthenticator where only the roster and the instructor can sign up (labs/
    jupyterhub_config.py opens sign-up, so a roster login's sign-up is authorized at once)."""

    def get_handlers(self, app):
        return [(path, ClassLoginHandler if h is LoginHandler else h) for path, h in super().get_handlers(app)]

    def create_user(self, username, password, **kwargs):
        name = self.normalize_username(username)
        if name not in self.allowed_users and name not in self.admin_users:
            self.log.warning("sign-up refused for %r: not on the class roster", name)
            return None
        if name in self.admin_users and not _instructor_password_is(password):
            self.log.warning("sign-up refused for %r: the instructor signs up only with the class's password", name)
            return None
        return super().create_user(username, password, **kwargs)


class ClassSpawner(LocalProcessSpawner):
    """A student's jupyter server as root, in their folder, with their slot."""

    state_dir = Unicode(config=True, help="the class's state folder (class.json, homes, exchange)")

    def _class(self) -> dict:
        return hub.read_class(Path(self.state_dir))

    def _home(self) -> Path:
        return Path(self.state_dir) / "home" / self.user.name

    def make_preexec_fn(self, name):
        where = self.notebook_dir or str(self._home())  # set by start()

        def preexec():  # no setuid: the server stays root (BPF needs it)
            os.chdir(where)

        return preexec

    def user_env(self, env):
        info = self._class()
        slot = hub.slot_of(info, self.user.name)
        env.update(hub.server_env(info, self.user.name, slot, self._home()))
        return env

    async def start(self):
        info = self._class()
        home = self._home()
        home.mkdir(parents=True, exist_ok=True)
        if self.user.name != info["instructor"]:
            copied = hub.copy_lessons(Path(info["release"]), home)
            if copied:
                self.log.info("lessons for %s: %s", self.user.name, ", ".join(copied))
        # the instructor works in the course folder (nbgrader's formgrader and commands find it there)
        self.notebook_dir = info["course"] if self.user.name == info["instructor"] else str(home)
        return await super().start()

    async def stop(self, now=False):
        await super().stop(now=now)
        slot = hub.slot_of(self._class(), self.user.name)
        undone = await asyncio.to_thread(hub.undo_slot, Path(self.state_dir), slot)
        if undone:
            self.log.info("server of %s (%s) stopped; undone: %s", self.user.name, slot, undone)


def _instructor_password_is(password: str) -> bool:
    """PASSWORD is the one `hub.start` wrote to the state folder before the hub listened."""
    try:
        want = (Path(os.environ[hub.MARK]) / hub.PASSWORD_FILE).read_text().strip()
    except (KeyError, OSError):
        return False
    return bool(want) and secrets.compare_digest(want, password or "")
