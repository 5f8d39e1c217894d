"""Benchmark harness: ``python -m bench [--quick]``.

Each scenario runs against the local RabbitMQ with its own processes, so the
process being measured never shares a Python interpreter with the load:

- ``bench.simulator``  a fast vendor simulator (Pidj ``POST /send``) with a latency parameter;
- ``bench.amqp``       topology, a publisher and an event collector (each in its own process);
- ``bench.baseline``   the bare ceiling: pika's asyncio adapter + aiohttp, nothing else;
- ``bench.procs``      starting, waiting for and stopping the simulator, baseline and worker;
- ``bench.scenarios``  the scenarios of the issue, each returning one result row;
- ``bench.report``     the table and the JSON file.
"""
