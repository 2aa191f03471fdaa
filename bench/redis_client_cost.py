"""CPU cost of the installed redis-py's asyncio client on the commands our stream paths send.

The web server's stream hub sends XREAD over every stream it follows, the
admission check a pipeline of LLEN (and a ZCOUNT), the worker's publisher
pipelines of EVALSHA: at hundreds per second, the client's own CPU per
command counts. This prints CPU microseconds per PING, per XREAD of 32
streams, and per pipeline of 11 commands, for the redis-py in this
interpreter. To compare versions, run it from scratch venvs side by side,
in one session (the machine's speed drifts), several times each:

    python -m venv /tmp/r7 && /tmp/r7/bin/pip install redis==7.4.1 hiredis==3.5.0
    python -m venv /tmp/r8 && /tmp/r8/bin/pip install redis==8.1.0 hiredis==3.5.0
    for i in 1 2 3; do
        /tmp/r7/bin/python bench/redis_client_cost.py; /tmp/r8/bin/python bench/redis_client_cost.py
    done

Uses (and flushes) Redis database 11 of ``REDIS_URL`` (default localhost).
"""

from __future__ import annotations

import asyncio
import os
import time

import redis
import redis.asyncio as aioredis

STREAMS = 32
PIPELINE = 11


async def measure(url: str, rounds: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await client.flushdb()
        streams = [f"bench:s{i}" for i in range(STREAMS)]
        for key in streams:
            await client.xadd(key, {"e": "x" * 100})
        await client.ping()

        async def ping() -> None:
            await client.ping()

        async def xread() -> None:
            await client.xread({key: "0" for key in streams}, block=1)

        async def pipeline() -> None:
            async with client.pipeline(transaction=False) as pipe:
                for i in range(PIPELINE):
                    pipe.llen(f"bench:l{i}")
                await pipe.execute()

        out = {}
        ops = (("ping", ping), (f"xread of {STREAMS}", xread), (f"pipeline of {PIPELINE}", pipeline))
        for name, op in ops:
            started = time.process_time()
            for _ in range(rounds):
                await op()
            out[name] = (time.process_time() - started) / rounds * 1e6
        return out
    finally:
        await client.flushdb()
        await client.aclose()


def main() -> None:
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    costs = asyncio.run(measure(f"{base}/11", rounds=2000))
    print(f"redis-py {redis.__version__}: " + ", ".join(f"{k} {v:.0f} us CPU" for k, v in costs.items()))


if __name__ == "__main__":
    main()
