"""The parent process: spawn the workers, drive them through a run, collect the figures.

The parent runs no client itself. It starts every worker, waits until all
have connected, says ``go`` to all at once, and then only watches: it sums
the workers' progress for the progress line, decides when the run is over
(everything delivered; or publishing finished and nothing new arrived for
``DRAIN_SECONDS``, which is how losses end a run; or ``--timeout``), and
tells the workers to stop. With ``--self-test`` it also hosts the sink.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import signal
import sys
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TextIO

from raftmq.cluster.tools.bench.plan import (
    CONNECTION_SCENARIOS,
    Addresses,
    BenchConfig,
    WorkerSpec,
    build_specs,
    format_address,
)
from raftmq.cluster.tools.bench.report import Report, build_report
from raftmq.cluster.tools.bench.sink import Sink
from raftmq.cluster.tools.bench.worker import Progress, WorkerResult, watch_pipe, worker_main

TICK = 0.5
DRAIN_SECONDS = 5.0
# After --timeout or completion: how long workers get to disconnect and report.
STOP_GRACE = 10.0


class BenchError(Exception):
    """The run could not start: a worker failed to connect or subscribe."""


@dataclass(eq=False)
class _Worker:
    spec: WorkerSpec
    process: BaseProcess
    conn: Connection
    progress: Progress
    ready: bool = False
    gone: bool = False
    result: WorkerResult | None = None
    errors: list[str] = field(default_factory=list)


def read_rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    # psutil is a test dependency of raftmq, not a runtime one: import on demand.
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def describe_addresses(cfg: BenchConfig, addresses: Addresses) -> str:
    """The broker address(es) of a run, as the report names them."""
    if cfg.scenario in CONNECTION_SCENARIOS:
        return ", ".join(format_address(a) for a in addresses.connect)
    if addresses.split:
        return (
            f"publishers {format_address(addresses.publish)}, "
            f"subscribers {format_address(addresses.subscribe)}"
        )
    return format_address(addresses.publish)


class Run:
    """One benchmark run, from spawning the workers to the report."""

    def __init__(self, cfg: BenchConfig, progress_stream: TextIO | None) -> None:
        self.cfg = cfg
        self.stream = progress_stream
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.interrupted = False
        self.workers: list[_Worker] = []
        self.rss_before = 0
        self.rss: tuple[int, int] | None = None
        self._last_line = ""
        self._last_sample = (0.0, 0)
        self.expected = 0

    async def execute(self) -> Report:
        cfg = self.cfg
        sink = None
        addresses = cfg.addresses
        broker = describe_addresses(cfg, addresses)
        if cfg.against_sink:
            sink = Sink()
            addresses = Addresses.single(("127.0.0.1", await sink.start()))
            broker = f"self-test sink {format_address(addresses.publish)}"
        self.loop.add_signal_handler(signal.SIGINT, self._interrupt)
        try:
            specs = build_specs(cfg, addresses, secrets.token_hex(3))
            self.expected = sum(
                n for spec in specs for s in spec.subscribers for n in s.sources.values()
            )
            self._spawn(specs)
            stopped_by = await self._drive(self.loop.time() + cfg.timeout)
            await self._stop()
        finally:
            self.loop.remove_signal_handler(signal.SIGINT)
            self._reap()
            if sink is not None:
                await sink.close()
        errors = [e for w in self.workers for e in w.errors]
        errors += [f"worker {w.spec.worker} sent no result" for w in self.workers if not w.result]
        return build_report(
            cfg,
            [w.result for w in self.workers if w.result],
            broker=broker,
            processes=len(self.workers),
            stopped_by=stopped_by,
            errors=errors,
            rss=self.rss,
        )

    # -- workers -------------------------------------------------------------------

    def _spawn(self, specs: list[WorkerSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        for spec in specs:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(spec, child_end),
                name=f"raftmq-bench-{spec.worker}",
                daemon=True,
            )
            process.start()
            child_end.close()
            worker = _Worker(spec, process, parent_end, Progress(spec.worker))
            self.workers.append(worker)
            watch_pipe(self.loop, parent_end, partial(self._on_message, worker))

    def _on_message(self, worker: _Worker) -> None:
        try:
            kind, body = worker.conn.recv()
        except (EOFError, OSError):
            self.loop.remove_reader(worker.conn.fileno())
            worker.gone = True
            if worker.result is None and not worker.errors:
                worker.process.join(1.0)
                worker.errors.append(
                    f"worker {worker.spec.worker} exited unexpectedly "
                    f"(exit code {worker.process.exitcode})"
                )
        else:
            if kind == "ready":
                worker.ready = True
            elif kind == "progress":
                worker.progress = body
            elif kind == "result":
                worker.result = body
                worker.progress = body.progress
            else:
                worker.errors.append(body)
        self.changed.set()

    def _send(self, command: str) -> None:
        for worker in self.workers:
            if not worker.gone:
                try:
                    worker.conn.send(command)
                except OSError:
                    worker.gone = True

    def _reap(self) -> None:
        for worker in self.workers:
            if not worker.gone:
                self.loop.remove_reader(worker.conn.fileno())
            worker.process.join(1.0)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(1.0)
            worker.conn.close()

    def _interrupt(self) -> None:
        self.interrupted = True
        self.changed.set()

    async def _wait(self, seconds: float) -> None:
        """Until a worker says something, an interrupt, or ``seconds``."""
        if seconds > 0:
            try:
                async with asyncio.timeout(seconds):
                    await self.changed.wait()
            except TimeoutError:
                pass
        self.changed.clear()

    # -- the run -------------------------------------------------------------------

    async def _drive(self, deadline: float) -> str:
        """Run until the scenario ends; return what ended it."""
        while not all(w.ready for w in self.workers):
            failed = [e for w in self.workers for e in w.errors]
            if failed:
                self._send("stop")
                raise BenchError("; ".join(failed))
            if self.interrupted or self.loop.time() >= deadline:
                return "interrupt during setup" if self.interrupted else "timeout during setup"
            await self._wait(deadline - self.loop.time())
        if self.cfg.broker_pid is not None:
            self.rss_before = read_rss(self.cfg.broker_pid)
        started = self.loop.time()
        self._send("go")
        total = sum(p.count for w in self.workers for p in w.spec.publishers)
        next_line = started
        last_delivered, last_change = -1, started
        while True:
            await self._wait(min(next_line, deadline) - self.loop.time())
            now = self.loop.time()
            totals = self._totals()
            if now >= next_line:
                self._progress_line(totals, now - started)
                next_line = now + TICK
            if totals.delivered != last_delivered:
                last_delivered, last_change = totals.delivered, now
            if any(w.errors for w in self.workers):
                return "worker failure"
            if all(w.progress.done for w in self.workers):
                if self.cfg.broker_pid is not None:
                    self.rss = (self.rss_before, read_rss(self.cfg.broker_pid))
                return "completion"
            if self.interrupted:
                return "interrupt"
            if now >= deadline:
                return "timeout"
            published_all = totals.published == total and (
                not self.cfg.qos or totals.settled == total
            )
            if total and published_all and now - last_change >= DRAIN_SECONDS:
                return "drain"

    async def _stop(self) -> None:
        self._send("stop")
        deadline = self.loop.time() + STOP_GRACE
        while any(not w.result and not w.gone for w in self.workers):
            if self.loop.time() >= deadline:
                return
            await self._wait(deadline - self.loop.time())
        self._progress_line(self._totals(), None)

    def _totals(self) -> Progress:
        total = Progress(-1)
        for w in self.workers:
            p = w.progress
            total.connected += p.connected
            total.published += p.published
            total.settled += p.settled
            total.delivered += p.delivered
            total.cycles += p.cycles
            total.errors += p.errors
        return total

    def _progress_line(self, totals: Progress, elapsed: float | None) -> None:
        """Rewrite the progress line on a terminal; elsewhere, one line per update.

        ``elapsed`` None ends the line for good.
        """
        if self.stream is None:
            return
        tty = self.stream.isatty()
        if elapsed is None:
            if tty and self._last_line:
                self.stream.write("\n")
                self.stream.flush()
            return
        cfg = self.cfg
        if cfg.scenario == "conns":
            body = f"connected {totals.connected:,}/{cfg.clients:,}"
        elif cfg.scenario == "connect-rate":
            rate = totals.cycles / elapsed if elapsed else 0
            body = f"cycles {totals.cycles:,} ({rate:,.0f}/s)"
        else:
            then, before = self._last_sample
            rate = (totals.delivered - before) / (elapsed - then) if elapsed > then else 0
            self._last_sample = (elapsed, totals.delivered)
            body = (
                f"published {totals.published:,}  delivered {totals.delivered:,}/"
                f"{self.expected:,}  {rate:,.0f} msgs/s"
            )
        if totals.errors:
            body += f"  errors {totals.errors:,}"
        line = f"[{cfg.scenario} {elapsed:5.1f} s] {body}"
        if tty:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = line


async def run_bench(cfg: BenchConfig, progress_stream: TextIO | None = sys.stderr) -> Report:
    """Run one benchmark and return its report; raise BenchError if it cannot start."""
    return await Run(cfg, progress_stream).execute()
