"""The development harness of fetalnode: what the demo, the tests and the benchmarks start around a node.

A private Orthanc (Debian package) and RabbitMQ on loopback, ``fetalnode`` node processes with typed
configurations on free ports, the fault and load scenarios, and the corpus of awkward inputs. One
way to start each of them, shared by ``python -m harness.demo``, ``tests/`` and ``benchmarks/``.

It lives beside ``src/``, is not installed and is not shipped in the wheel: ``src/fetalnode``
never imports it. Every server it starts listens on 127.0.0.1.
"""
