#!/usr/bin/env python3
"""tcp_count.py LISTEN_PORT TARGET_PORT OUT_FILE: a TCP relay on 127.0.0.1 that counts the
payload bytes in each direction (client->server, server->client) over all its connections,
for the bytes-on-the-wire figures of benches/RESULTS.md (TCP/IP headers are not counted: they
are the same per segment whatever the protocol). On SIGTERM or SIGINT it writes
"up BYTES down BYTES connections N" (connections that carried bytes) to OUT_FILE and exits."""
import asyncio
import signal
import sys

listen_port, target_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
count = {"up": 0, "down": 0, "connections": 0}


async def pipe(reader, writer, key):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            count[key] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(creader, cwriter):
    before = count["up"]
    try:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pipe(creader, swriter, "up"), pipe(sreader, cwriter, "down"))
    count["connections"] += count["up"] > before  # a readiness probe sends nothing


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()
    with open(out, "w") as f:
        f.write("up %d down %d connections %d\n" % (count["up"], count["down"], count["connections"]))


asyncio.run(main())
