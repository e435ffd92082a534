"""`python manage.py runall`: web, worker and beat in one terminal; Ctrl-C stops all three.

For development and demos on the embedded defaults (SQLite, filesystem broker). In
production run the three as separate services (README, "Production").
"""

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and Celery beat together (development)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1", help="web server address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
        parser.add_argument("--concurrency", type=int, default=4, help="worker threads (default 4)")

    def handle(self, *args, addr, port, concurrency, **options):
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
        db = settings.DATABASES["default"]
        self.stdout.write(
            self.style.SUCCESS("Webhook service running (Ctrl-C stops web, worker and beat):")
            + f"\n  admin     http://{addr}:{port}/admin/   (create a login: python manage.py createsuperuser)"
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
        while not stopping:
            exited = [name for name, p in procs.items() if p.poll() is not None]
            if exited:
                self.stderr.write(f"{', '.join(exited)} exited; stopping the rest")
                break
            time.sleep(0.2)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        self.stdout.write("stopped")


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
