"""`python manage.py runall`: web, worker and beat in one terminal; Ctrl-C stops all three.

For development and demos on the embedded defaults (SQLite, filesystem broker). In
production run the three as separate services (README, "Production").
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and Celery beat together (development)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1", help="web server address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
        parser.add_argument("--concurrency", type=int, default=4, help="worker threads (default 4)")

    def handle(self, *args, addr, port, concurrency, **options):
        refuse_taken_port(addr, port)
        call_command("migrate", interactive=False, verbosity=0)
        for stale in settings.PROMETHEUS_MULTIPROC_DIR.glob("*.db"):
            stale.unlink()  # the three processes count from zero together (deliveries/metrics.py)
        celery = [sys.executable, "-m", "celery", "-A", "webhooks_project"]
        commands = {
            "web": [sys.executable, "manage.py", "runserver", "--noreload", f"{addr}:{port}"],
            "worker": [*celery, "worker", "--pool", "threads", "-c", str(concurrency), "-l", "info",
                       "--without-mingle", "--without-gossip"],
            "beat": [*celery, "beat", "-l", "info", "-s", settings.CELERY_BEAT_SCHEDULE_FILENAME],
        }  # fmt: skip
        procs = {name: subprocess.Popen(cmd, cwd=settings.BASE_DIR) for name, cmd in commands.items()}
        if not web_answers(addr, port, procs["web"]):
            stop_all(procs)
            raise CommandError(f"the web server did not start on {addr}:{port} (its error is above)")
        db = settings.DATABASES["default"]
        self.stdout.write(
            self.style.SUCCESS("Webhook service running (Ctrl-C stops web, worker and beat):")
            + f"\n  admin     http://{addr}:{port}/admin/   (create a login: {manage_py()} createsuperuser)"
            + f"\n  health    http://{addr}:{port}/health/"
            + f"\n  metrics   http://{addr}:{port}/metrics"
            + f"\n  database  {db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}"
            + f"\n  broker    {settings.CELERY_BROKER_URL.split('@')[-1]}"
            + "\n  logs      this terminal: web requests, worker deliveries and retries, beat\n"
        )
        if settings.WEBHOOK_ALLOWED_CIDRS:
            self.stdout.write(self.style.WARNING(open_networks_warning()))
        self.stdout.flush()
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exited = []
        while not stopping and not exited:
            exited = [name for name, p in procs.items() if p.poll() is not None]
            time.sleep(0.2)
        stop_all(procs)
        if exited:  # not Ctrl-C: a process died, and the service with it
            raise CommandError(f"{', '.join(exited)} exited on its own (its error is above); stopped the rest")
        self.stdout.write("stopped")


def refuse_taken_port(addr: str, port: int) -> None:
    """Say so before starting anything, rather than printing "running" over a web server that
    dies at once ("That port is already in use") beside a worker and beat that keep going."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family) as probe:
        try:
            probe.bind((addr, port))
        except OSError as error:
            raise CommandError(
                f"cannot listen on {addr}:{port}: {error.strerror or error}. Is another `dev.py up` running? "
                f"Stop it, or choose another port: python3 dev.py up --port {port + 1}"
            ) from None


def web_answers(addr: str, port: int, web: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until the web server answers /health/live (True), or exits or times out (False)."""
    host = f"[{addr}]" if ":" in addr else ("127.0.0.1" if addr == "0.0.0.0" else addr)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    deadline = time.monotonic() + timeout
    while web.poll() is None and time.monotonic() < deadline:
        try:
            with direct.open(f"http://{host}:{port}/health/live", timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def stop_all(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def manage_py() -> str:
    """How to run manage.py with this interpreter, as typed in the project directory
    (`.venv/bin/python manage.py`: a bare `python` outside the venv lacks Django)."""
    python = sys.executable
    if python.startswith(str(settings.BASE_DIR) + os.sep):
        python = os.path.relpath(python, settings.BASE_DIR)
    return f"{python} manage.py"


def open_networks_warning() -> str:
    """What runall (and so `dev.py up`) says at start while WEBHOOK_ALLOWED_CIDRS opens networks
    the SSRF guard would refuse: any organization's endpoint may then target them."""
    cidrs = ",".join(settings.WEBHOOK_ALLOWED_CIDRS)
    return (
        f"WARNING: WEBHOOK_ALLOWED_CIDRS={cidrs}: endpoints may target these networks, which the SSRF\n"
        "  guard otherwise refuses: any organization's webhook can make the worker POST to the services\n"
        "  on them (on loopback, this machine's own: database, broker, admin). For development only;\n"
        "  in production leave it empty (the default when DJANGO_DEBUG=false).\n"
    )
