"""A FastAPI receiver of this service's webhooks, whole in one file.

    pip install fastapi uvicorn
    WEBHOOK_SECRETS=whsec_… python examples/fastapi_receiver.py 127.0.0.1:3000

then point an endpoint at http://127.0.0.1:3000/hook. It prints one line per webhook handled.
The environment is the Django example's (WEBHOOK_SECRETS, WEBHOOK_STYLES, REDIS_URL).

In your own project: copy `webhooks/receiver.py` beside your code as `webhook_receiver.py` and
take the verified webhook as a dependency, as below.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "webhooks"))  # the kit, from this repository
import receiver as webhook_receiver  # noqa: E402


def replay_store():
    if os.environ.get("REDIS_URL"):
        import redis

        return webhook_receiver.RedisReplayStore(redis.Redis.from_url(os.environ["REDIS_URL"]))
    return webhook_receiver.MemoryReplayStore()


hooks = webhook_receiver.Receiver(
    os.environ["WEBHOOK_SECRETS"].split(","),
    styles=os.environ.get("WEBHOOK_STYLES", "standard,letta").split(","),
    replay_store=replay_store(),
)
verified = webhook_receiver.fastapi_dependency(hooks)
app = FastAPI()


@app.post("/hook")
async def hook(webhook: Annotated[webhook_receiver.Webhook, Depends(verified)]):
    # Your handling here. Raise (HTTPException or any error) to have it retried.
    print(f"{webhook.event_type} {webhook.id} {webhook.style}", flush=True)
    return {"status": "ok"}


if __name__ == "__main__":
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:3000").rpartition(":")
    uvicorn.run(app, host=host, port=int(port), log_level="warning")
