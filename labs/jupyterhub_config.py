# JupyterHub's configuration for a class on one machine (`sudo make class ROSTER=...`).
# `labkit class start` (labkit/teaching/hub.py) writes the class file STATE/class.json and
# starts the hub with this file and LABKIT_CLASS_STATE=STATE; see labs/README.md.
import os
from pathlib import Path

from labkit.teaching import hub

c = get_config()  # noqa: F821  (JupyterHub provides it)
state = Path(os.environ[hub.MARK])
info = hub.read_class(state)
venv_bin = Path(info["venv_bin"])

# Where: the proxy's public side on IP:PORT, the hub and the proxy's API on free local ports.
c.JupyterHub.bind_url = f"http://{info['ip']}:{info['port']}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = info["hub_port"]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{info['proxy_api_port']}"
c.ConfigurableHTTPProxy.command = [str(venv_bin / "configurable-http-proxy")]
# The hub's own state, in the state folder (not in git): database (hashed passwords), cookie secret.
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every server (and undoes its testbeds)
c.JupyterHub.cleanup_proxy = True

# Who: the roster and the instructor; passwords set on the sign-up page, stored hashed.
c.JupyterHub.authenticator_class = "labkit.teaching.hub_spawner.ClassAuthenticator"
c.Authenticator.allowed_users = set(info["students"])
c.Authenticator.admin_users = {info["instructor"]}
c.NativeAuthenticator.open_signup = True  # for the roster's logins only (ClassAuthenticator)
c.NativeAuthenticator.minimum_password_length = 8
c.NativeAuthenticator.check_common_password = True
c.NativeAuthenticator.allowed_failed_logins = 5
c.NativeAuthenticator.seconds_before_next_try = 60

# How: each login's server as root in STATE/home/LOGIN with its slot (labkit/teaching/hub_spawner.py).
c.JupyterHub.spawner_class = "labkit.teaching.hub_spawner.ClassSpawner"
c.ClassSpawner.state_dir = str(state)
c.Spawner.cmd = [str(venv_bin / "jupyterhub-singleuser")]
c.Spawner.args = [
    "--allow-root",
    "--MappingKernelManager.default_kernel_name=labkit",
    "--LabApp.news_url=",
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120

# Idle servers are stopped after an hour (their testbeds are undone like any stopped server's).
idle_timeout = int(os.environ.get("LABKIT_IDLE_TIMEOUT", "3600"))
c.JupyterHub.services = [
    {
        "name": "idle-culler",
        "command": [str(venv_bin / "python"), "-m", "jupyterhub_idle_culler", f"--timeout={idle_timeout}"],
        "environment": {hub.MARK: str(state)},
    }
]
c.JupyterHub.load_roles = [
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }
]

formgrader_home = state / "home" / "formgrader"
formgrader_home.mkdir(parents=True, exist_ok=True)
formgrader_env = hub.server_env(info, info["instructor"], hub.INSTRUCTOR_SLOT, formgrader_home)
del formgrader_env["LABKIT_STUDENT"]
# The formgrader, for the instructor only: a jupyter server in the course folder run by the hub
# as a service at /services/formgrader/ (nbgrader's formgrader, and the course's notebooks).
c.JupyterHub.services.append(
    {
        "name": "formgrader",
        "url": f"http://127.0.0.1:{info['formgrader_port']}",
        "command": [
            str(venv_bin / "jupyterhub-singleuser"),
            "--allow-root",
            f"--ServerApp.root_dir={info['course']}",
            "--MappingKernelManager.default_kernel_name=labkit",
        ],
        "cwd": info["course"],
        # the instructor's slot by default (LABKIT_STUDENT unset): stopping the instructor's own
        # server (which ends what carries LABKIT_STUDENT=s00) leaves the formgrader alone
        "environment": {
            **formgrader_env,
            "JUPYTERHUB_DEFAULT_URL": "/formgrader",
            "LABKIT_SMOKE": "1",  # autograding from the formgrader runs the measuring lessons short
        },
        "oauth_no_confirm": True,
    }
)
c.JupyterHub.load_roles.append(
    {"name": "formgrader-users", "scopes": ["access:services!service=formgrader"], "users": [info["instructor"]]}
)
