"""The training engine: one loop for 1 to P runs of one shape and length, trained as one program.

A single run, a warmup-stable-decay trunk or branch (scaling.branching) and a pack of runs (scaling.packing) all
train here, so resume, checkpoint cadence (train.checkpoint_every_s, train.checkpoint_every_steps), the
divergence check, evaluation rows, progress.json, the progress bar and the summaries hold for every kind of run.
Losses come back to the host one chunk late (after the next chunk is dispatched), which keeps the device busy
while the host checks them for divergence and assembles the next batches. A member whose loss is non-finite or
above diverge_factor x ln(vocab) is recorded as diverged at that step; the others go on. SIGTERM or SIGINT saves
a checkpoint and stops the loop between chunks (scaling.signals); a relaunch resumes from the latest checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from scaling import checkpoints, data, devices, probes, program, runs, sizes, summary, trackers
from scaling import plan as plans
from scaling.config import ConfigError
from scaling.progress import RunProgress
from scaling.signals import Stop

log = logging.getLogger("scaling.train")


@dataclass(frozen=True)
class Fork:
    """Where a run starts when it has no checkpoint of its own: the state another run (a warmup-stable-decay
    trunk) saved at `step` in <folder>/forks/, and that run's log up to it."""

    folder: Path
    step: int


class Timer:
    """Steady-state tokens/s: the first chunk (compilation) and evaluation / checkpoint time are excluded."""

    def __init__(self, t_start: float):
        self.t_start, self.first_s, self.t_first_done, self.first_n = t_start, None, None, 0
        self.trained, self.overhead_s = 0, 0.0

    def chunk_done(self, n: int) -> None:
        if self.first_s is None:
            self.first_s, self.t_first_done, self.first_n = time.time() - self.t_start, time.time(), n
        self.trained += n

    def tokens_per_s(self, tokens_per_step: int) -> float | None:
        if self.first_s is None:
            return None
        n, seconds = self.trained - self.first_n, time.time() - self.t_first_done - self.overhead_s
        return n * tokens_per_step / seconds if n > 0 and seconds > 0 else None


class Engine:
    """Trains `cfgs` (one config per member, equal but for seed and learning rate) into `folders`, with the
    loop's checkpoint in `home` (the run folder of a single run); see the module docstring."""

    def __init__(self, cfgs: list[DictConfig], folders: list[Path], home: Path, fork: Fork | None = None,
                 save_forks: tuple[int, ...] = (), extra_points: tuple[int, ...] = (),
                 guard: Callable[[], None] = lambda: None):
        self.t_start = time.time()
        self.guard = guard  # raises scaling.lock.LockLost when this process no longer holds its runs' locks
        cfg = self.cfg = cfgs[0]
        self.cfgs, self.folders, self.home, self.fork, self.save_forks = cfgs, folders, home, fork, save_forks
        self.p = len(cfgs)
        program.enable_compilation_cache(cfg.data.cache_dir)
        self.plan = plans.plan_run(cfg, (*save_forks, *extra_points))
        shape = self.plan.shape
        self.corpus, self.unique = data.training_corpus(cfg, shape)
        if cfg.probes.tasks and self.corpus.fingerprint.get("tokenizer") not in (None, "bytes"):
            raise ConfigError(f"probes.tasks are byte strings, scored byte by byte: they need byte tokens, and "
                              f"data.corpus={cfg.data.corpus!r} is tokenized by {self.corpus.fingerprint['tokenizer']}")
        self.lrs = [plans.peak_lr(c, shape, self.plan.steps) for c in cfgs]
        self.prog = program.build(cfg, shape, self.plan.steps, [(c.train.seed, lr) for c, lr in zip(cfgs, self.lrs)])
        self.batches = [data.Batches(self.corpus, self.unique, shape.seq_len, cfg.train.batch_size, c.train.seed)
                        for c in cfgs]
        self.probe_tasks = probes.tasks(cfg.probes)
        self.probe_sets = [probes.eval_set(t, cfg.probes.eval_items, shape.seq_len) for t in self.probe_tasks]
        val = data.eval_batches(self.corpus, shape.seq_len, cfg.data.eval_windows)
        # Bits per byte = the validation targets' total loss in bits over the bytes of text they stand for; both
        # counts are fixed for a corpus, tokenizer and validation set, so a ratio converts every evaluation.
        self.eval_tokens, self.eval_bytes = int(val[..., 1:].size), data.eval_bytes(self.corpus, val)
        self.val = jnp.asarray(val)
        self.limit = cfg.train.diverge_factor * math.log(shape.vocab)
        self.ckpt = checkpoints.manager(home / runs.CKPT)
        self.forks = checkpoints.manager(home / runs.FORKS, max_to_keep=None) if save_forks else None
        self.sums, self.ns, self.bad = np.zeros(self.p), np.zeros(self.p), np.zeros(self.p, int)
        self.last: list[dict | None] = [None] * self.p
        self.damaged: list[list[int]] = [[] for _ in range(self.p)]
        self.step = self.end = 0
        self.elapsed0, self.resumed = 0.0, None
        self.timer = Timer(self.t_start)
        self.processes = jax.process_count()
        log.info("%s: N=%s (non-embedding) layers=%d d_model=%d; D=%s; %d steps (%s); (seed, lr) %s",
                 folders[0].name if self.p == 1 else f"pack {home.name} of {self.p} runs", f"{self.plan.N:,}",
                 shape.n_layers, shape.d_model, f"{self.unique:,}", self.plan.steps, self.plan.length_source,
                 [(c.train.seed, lr) for c, lr in zip(cfgs, self.lrs)])

    def run(self) -> list[dict]:
        """Train to the end, a divergence of every member, or a signal; return each member's summary."""
        self._start()
        self.summaries = self._summaries()
        self.trackers = self._trackers()
        self.progress = RunProgress(self.cfg.train.progress, self.plan.steps, self.step)
        self.t_loop = self.t_progress = time.time()
        if self.step >= self.plan.steps:  # killed between the final checkpoint and the summary
            return self._finish(self._finalise())
        with Stop() as stop:
            status = self._loop(stop)
        return self._finish(status)

    def _finalise(self) -> str:
        """A run restored at its final step: its final evaluation is the logged one, or is computed now from the
        checkpoint."""
        if any(last is None or last["step"] != self.plan.steps for last, bad in zip(self.last, self.bad) if not bad):
            log.warning("%s: final checkpoint without its final evaluation; evaluating it now", self.home.name)
            self._evaluate(self.plan.steps)
        return "completed" if not self.bad.all() else "diverged"

    def _start(self) -> None:
        """Resume from this loop's checkpoint, else start from a fork of another run, else from scratch."""
        at, source = self.ckpt.latest_step(), self.ckpt
        if at is None and self.fork is not None:
            source, at = checkpoints.manager(self.fork.folder / runs.FORKS, max_to_keep=None), self.fork.step
            if at not in source.all_steps():
                raise RuntimeError(f"no saved state at step {at} in {self.fork.folder / runs.FORKS} to branch from")
            # The branch's log starts with its trunk's, which is its own history up to the fork.
            self.guard()
            runs.write_metrics(self.folders[0], [r for r in runs.read_metrics(self.fork.folder)[0] if r["step"] <= at])
        if at is not None and source is self.ckpt:
            self._same_data()
            self._same_numerics()
        acc = None
        while at is not None and acc is None:
            if source is self.ckpt and (why := checkpoints.damaged(source, at)):
                at = self._set_aside(at, why)  # cut short: found without reading it
                continue
            try:
                acc, self.elapsed0 = checkpoints.restore(source, at, self.prog.state, self.p,
                                                         self.home / f"restore-{at}.log")
            except Exception as e:  # Orbax and TensorStore raise many kinds for a damaged checkpoint
                if source is not self.ckpt or runs.storage_problem(e):
                    raise
                # A failed Orbax read leaves its reader threads half torn down, which can crash this process later:
                # the checkpoint is set aside and the run left for the next launch, in a fresh process.
                problem = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". See full")[0][:160]
                before = self._set_aside(at, problem, quiet=True)
                raise runs.StorageError(
                    f"run {self.home}: its checkpoint at step {at} does not restore ({problem}); it is set aside as "
                    f"{runs.CKPT}-unreadable-{at}, and the next launch "
                    + (f"resumes it from step {before}" if before is not None else "trains it from the start")
                    + "; relaunch the same command") from None
        if at is not None:
            self.prog.state = self.prog.place(self.prog.state)
            self.step = self.end = int(at)
            self.sums, self.ns, self.bad = acc[0], acc[1], acc[2].astype(int)
            self.resumed = self.step if source is self.ckpt else None
            log.info("%s at step %d", "resumed" if source is self.ckpt else "branched", self.step)
            if source is not self.ckpt:
                source.close()
        self.guard()
        for i, folder in enumerate(self.folders):
            kept, damaged = runs.truncate_metrics(folder, self.step)
            self.last[i] = kept[-1] if kept else None
            if damaged:
                self.damaged[i] = damaged
                log.warning("run %s: %s line(s) %s were damaged and are dropped (no row can be re-derived for "
                            "an earlier step); the %d valid rows up to step %d are kept", folder.name, runs.METRICS,
                            damaged, len(kept), self.step)

    def _set_aside(self, step: int, problem: str, quiet: bool = False) -> int | None:
        """A checkpoint that does not restore (truncated, damaged) is renamed out of the way, never deleted; the run
        resumes from the one before it, or from the start. Returns that step, or None."""
        self.guard()
        self.ckpt.close()
        aside = self.home / f"{runs.CKPT}-unreadable-{step}"
        while aside.exists():
            aside = aside.with_name(aside.name + "+")
        (self.home / runs.CKPT / str(step)).rename(aside)
        report = self.home / f"restore-{step}.log"  # what the failed restore printed (scaling.checkpoints)
        if report.exists():
            report.rename(aside / "restore.log")
        self.ckpt = checkpoints.manager(self.home / runs.CKPT)
        before = self.ckpt.latest_step()
        if not quiet:
            log.warning("run %s: its checkpoint at step %d does not restore (%s); set aside as %s; %s", self.home.name,
                        step, problem[:160], aside.name,
                        f"resuming from step {before}" if before is not None else "training from the start")
        return before

    def _same_numerics(self) -> None:
        """Refuse to resume a run under a device count, CPU thread count or platform that changes its numbers
        (scaling.devices), unless train.devices asks for another mesh: a resume must not mix two runs' numbers."""
        if self.cfg.train.devices is not None:
            return
        now = devices.environment(self.cfg)
        for folder in self.folders:
            then = runs.read_summary(folder) or {}
            changed = [f"{key} {then[key]} -> {now[key]}" for key in ("platform", "devices", "cpu_threads")
                       if then.get(key) is not None and now.get(key) is not None and then[key] != now[key]]
            if changed:
                raise ConfigError(
                    f"run {folder.name} started under other numerics than this process has ({', '.join(changed)}): "
                    f"resumed here it would mix two runs' numbers; resume it where it started (the launcher it "
                    f"started under), or set train.devices to resume it on another mesh on purpose")

    def _same_data(self) -> None:
        """Refuse to resume a run on data that changed under the same name: the corpus's content or the
        tokenizer's, as its summary recorded them when it started."""
        now = self.corpus.fingerprint
        for folder in self.folders:
            then = (runs.read_summary(folder) or {}).get("corpus") or {}
            for key, what in (("content_sha256", "corpus"), ("tokenizer_sha256", "tokenizer")):
                if then.get(key) and now.get(key) and then[key] != now[key]:
                    raise ConfigError(
                        f"run {folder.name} started on a {what} whose content hashes to {then[key][:12]}, and "
                        f"data.corpus={self.cfg.data.corpus!r} (data.tokenizer={self.cfg.data.tokenizer!r}) now gives "
                        f"{now[key][:12]}: it is not resumed on other data; restore the data it trained on, or move "
                        f"{folder} away to train it afresh")

    def _summaries(self) -> list[dict]:
        """Each member's summary at the start (status running), written to its folder."""
        env = {**devices.environment(self.cfg), "state_bytes_per_device": devices.state_bytes(self.prog.state)}
        head = summary.head(self.cfg, self.plan, self.unique, self.corpus, env)
        head.update(eval_tokens=self.eval_tokens, eval_bytes=self.eval_bytes)
        out = []
        self.guard()
        for cfg, folder, lr in zip(self.cfgs, self.folders, self.lrs):
            s = {"run_id": folder.name, "status": "running", **head, "seed": cfg.train.seed, "lr": lr,
                 "resumed_from_step": self.resumed}
            if self.fork is not None:
                s.update(branch_of=self.fork.folder.name, fork_step=self.fork.step)
            if self.p > 1:
                s.update(pack_id=self.home.name, pack_size=self.p)
            runs.write_summary(folder, s)
            out.append(s)
        return out

    def _trackers(self) -> list[trackers.Trackers]:
        """Each member's trackers (scaling.trackers), with its config and size as hyperparameters."""
        size = {"N": self.plan.N, "N_total": sizes.count_params(self.plan.shape)["N_total"],
                "tokens": self.plan.tokens, "C": 6 * self.plan.N * self.plan.tokens}
        main = jax.process_index() == 0
        return [trackers.Trackers(cfg, folder, {**trackers.flat_config(cfg), **size, "lr_peak": lr}, main)
                for cfg, folder, lr in zip(self.cfgs, self.folders, self.lrs)]

    def _loop(self, stop: Stop) -> str:
        plan, tc = self.plan, self.cfg.train
        pending, t_ckpt = None, time.time()
        for start, n in (c for c in plan.chunks if c[0] >= self.step):
            tokens = self._tokens(start, n)  # host work overlaps the chunk still running on the device
            if pending is not None and not self._check(*pending):
                return "diverged"
            pending = None
            self.prog.state, losses = self.prog.train_chunk(self.prog.state,
                                                             *self.prog.feed(tokens, np.arange(plan.k) < n))
            self.end = end = start + n
            every = tc.checkpoint_every_steps
            due = time.time() - t_ckpt > tc.checkpoint_every_s or bool(every and end % every == 0)
            signalled = stop.signal  # read once: a signal arriving later in this chunk waits for the next
            if self.processes > 1:  # every process saves and stops together (scaling.devices.agree)
                due, anywhere = devices.agree(due, bool(signalled))
                signalled = signalled or ("SIGTERM (another process)" if anywhere else None)
            if not (end in plan.points or due or signalled):
                pending = (start, n, losses)
                continue
            if not self._check(start, n, losses):
                return "diverged"
            if end in plan.points:
                self._evaluate(end)
            if end in self.save_forks and end not in self.forks.all_steps():  # saved before a kill: the same state
                self._save(end, self.forks)
            if (due or signalled) and end < plan.steps:
                self._save(end, self.ckpt)
                t_ckpt = time.time()
            if signalled:
                log.warning("%s interrupted by %s at step %d; checkpoint saved", self.home.name, signalled, end)
                return "interrupted"
        return "completed"

    def _tokens(self, start: int, n: int) -> np.ndarray:
        """The next chunk's batches (probe text mixed in), padding steps zeroed; a member axis first when packed."""
        tokens = np.stack([b.get(start, self.plan.k) for b in self.batches])
        for member, cfg in zip(tokens, self.cfgs):
            probes.mix(member, start, self.probe_tasks, cfg.probes.train_fraction, cfg.train.seed)
        tokens[:, n:] = 0
        return tokens if self.p > 1 else tokens[0]

    def _check(self, start: int, n: int, losses) -> bool:
        """Read a finished chunk's losses (waits for it); mark diverged members. False when none is left."""
        host = np.asarray(losses).reshape(self.p, -1)[:, :n]
        self.timer.chunk_done(n)
        for i in np.flatnonzero(self.bad == 0):
            wrong = np.flatnonzero(~np.isfinite(host[i]) | (host[i] > self.limit))
            if len(wrong):
                self.bad[i] = start + int(wrong[0]) + 1
                log.error("run %s diverged at step %d: loss %s", self.folders[i].name, self.bad[i], host[i, wrong[0]])
        self.sums += host.astype(np.float64).sum(1)
        self.ns += n
        end = start + n
        alive = self.bad == 0
        if alive.any():
            self.progress.update(end, float(host[alive, -1][0]))
        every = max(self.plan.k, self.plan.steps // trackers.TRAIN_POINTS)
        if end // every > start // every and end not in self.plan.points:  # a training point between evaluations
            for i in np.flatnonzero(self.bad == 0):
                self.trackers[i].log(end, {"loss/train": float(host[i, -1]), "lr": float(self.prog.lr_fns[i](end - 1)),
                                           "tokens": end * self.plan.tokens_per_step,
                                           "flops": 6 * self.plan.N * end * self.plan.tokens_per_step})
        if end in self.plan.points or time.time() - self.t_progress > 5:  # the sweep's progress line reads it
            self.guard()
            for folder in self.folders:
                runs.write_progress(folder, end)
            self.t_progress = time.time()
        return bool(alive.any())

    def _evaluate(self, end: int) -> None:
        """Evaluation loss and probe metrics of every live member: one metrics.jsonl row each."""
        t0 = time.time()
        evals = np.asarray(self.prog.eval_loss(self.prog.state, self.val)).reshape(self.p)
        scored: list[dict] = [{} for _ in range(self.p)]
        for es in self.probe_sets:
            lp, hit = (np.asarray(a).reshape(self.p, *a.shape[-2:])
                       for a in self.prog.probe_logprobs(self.prog.state, jnp.asarray(es.rows)))
            for i in range(self.p):
                scored[i].update(probes.score(es, lp[i], hit[i]))
        tok_s = self.timer.tokens_per_s(self.plan.tokens_per_step * self.p)
        self.guard()
        for i in np.flatnonzero(self.bad == 0):
            row = {"step": end, "tokens_seen": end * self.plan.tokens_per_step,
                   "train_loss": self.sums[i] / self.ns[i] if self.ns[i] else None, "eval_loss": float(evals[i]),
                   "eval_bpb": self._bpb(float(evals[i])),
                   **scored[i],
                   "lr": float(self.prog.lr_fns[i](end - 1)), "tokens_per_s": tok_s and tok_s / self.p,
                   "elapsed_s": self.elapsed0 + time.time() - self.t_loop}
            runs.append_metrics(self.folders[i], row)
            self.trackers[i].log(end, trackers.row_values(row, self.plan.N))
            self.last[i] = row
        if (self.bad == 0).any():
            self.progress.log(self.last[int(np.flatnonzero(self.bad == 0)[0])], self.p)
        self.sums[:], self.ns[:] = 0.0, 0
        self.timer.overhead_s += time.time() - t0

    def _bpb(self, nats_per_token: float) -> float | None:
        """Bits per byte of an evaluation loss (exactly nats per token / ln 2 under the byte tokenizer)."""
        if not self.eval_bytes:
            return None
        return nats_per_token * (self.eval_tokens / self.eval_bytes) / math.log(2)

    def _save(self, step: int, manager) -> None:
        self.guard()
        t0 = time.time()
        checkpoints.save(manager, step, self.prog.state, np.stack([self.sums, self.ns, self.bad]),
                         self.elapsed0 + time.time() - self.t_loop)
        checkpoints.record_sizes(manager, step)
        self.timer.overhead_s += time.time() - t0

    def _finish(self, status: str) -> list[dict]:
        """The final checkpoint and every member's summary."""
        self.progress.close()
        for t in self.trackers:
            t.close()
        if status == "completed" and not self.bad.all() and self.plan.steps not in self.ckpt.all_steps():
            self._save(self.plan.steps, self.ckpt)
        tok_s = self.timer.tokens_per_s(self.plan.tokens_per_step * self.p)
        wall = self.elapsed0 + time.time() - self.t_loop
        self.guard()
        for i, (cfg, folder, s) in enumerate(zip(self.cfgs, self.folders, self.summaries)):
            bad = int(self.bad[i])
            s.update({"status": "diverged" if bad else status, "diverged_at_step": bad or None,
                      **summary.totals(cfg, self.plan.shape, self.unique, bad - 1 if bad else self.end, self.last[i],
                                       self.probe_tasks),
                      **summary.timing(self.plan.shape, wall, self.timer.first_s, tok_s and tok_s / self.p)})
            if self.damaged[i]:
                s["metrics_damaged_lines"] = self.damaged[i]
            runs.write_summary(folder, s)
            log.info("run %s %s: eval loss %s after %d steps, %.1f s", folder.name, s["status"],
                     s["final_eval_loss"], s["steps_done"], s["wall_s"])
        self.ckpt.close()
        if self.forks is not None:
            self.forks.close()
        return self.summaries
