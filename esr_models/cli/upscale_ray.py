"""``esr upscale ... --ray [ADDRESS]``: the files of one batch upscaled on a Ray cluster.

Ray is an optional extra (``pip install -e '.[ray]'``). The driver (the ``esr`` process) does
everything the local path does before a file is read: option checks, input expansion, the
model (loaded once here, so a wrong name, a missing or bad checkpoint fails with exit 2 before
any worker starts), output names and the skip/fail triage of ``io.jobs.triage``. Only the jobs
left to run go to Ray, as rows ``{src, dst}`` (paths, not pixels: images of any size are
decoded by the workers). An actor pool holds one model per worker (``num_gpus=1`` per worker
on CUDA; on CPU, ``--ray-cpus-per-worker`` CPUs and as many torch threads, so workers do not
oversubscribe the cores). Each worker runs ``io.jobs.run_job`` (or the video path, as the local
loop does), so outputs follow the rules of ``io/outputs.py``: the same names, never replacing a
file without ``--overwrite``, temporary file + atomic move, one file's failure reported by name.
The driver feeds the outcomes into the same ``io.jobs.Report``: same lines, same summary, same
exit code (0 all done or skipped, 1 some failed, 2 usage/setup error before any file).

Workers need this package (and Ray) installed on every node, and the input and output paths
visible under the same names on every node (a shared file system); the model weights travel
with the job, so workers need no weights, ``ESR_WEIGHTS_DIR`` or network of their own. The
driver's ``ESR_*`` environment variables are passed to the workers. Object-store paths (s3://,
gs://) are not supported: outputs are written with the local path's file-system rules.

Joining a cluster gives up after ``--ray-connect-timeout`` seconds (default 30) with one error
line, exit 2, before the output folder is made: Ray alone would retry an address where nothing
answers for many minutes. Nothing listening there fails at once (a TCP connection is tried
first); something that accepts connections but does not answer as Ray fails at the timeout.

Joining a cluster, the device and the fused backend are checked where they run, on the workers:
if no worker can start (no GPU, no native extension), that one error is reported with exit 2
and the output folder, if this run made it, is removed again.

Same bytes as the local path: same model, dtype and thread count give the same outputs. Torch's
CPU convolutions can differ in the last bit with the number of threads, so a one-CPU worker
matches ``OMP_NUM_THREADS=1 esr upscale ...``, not necessarily a local run on all the cores.

Killed workers: Ray restarts a dead worker and retries its file (up to ``MAX_ATTEMPTS``
attempts per file; a file whose attempts all die is reported failed by name). A retried file
whose output the dead attempt already moved into place is not written again: the worker sees
that the output appeared (or, with ``--overwrite``, was replaced) after the driver planned the
batch and counts it done. The only consequence: an output that another program or a concurrent
run creates under the same name during this run also counts as done, where the local path says
"skipped". Temporary files a killed worker leaves behind are removed by the driver at the end.

Test hook: ``ESR_TEST_DELAY_S`` (seconds, default 0) makes every worker sleep that long after
each file, so that tests can kill a worker mid-run. Not for users.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from ..infer.loading import load
from ..infer.upscaler import DTYPES, Upscaler
from ..io.jobs import DONE, FAILED, SKIPPED, Outcome, Report, run_job, triage
from ..io.media import is_video
from ..io.outputs import TEMP_PREFIX, Job, default_suffix, file_identity, plan_outputs
from ..io.video import upscale_video
from .common import UsageError, check_backend, check_device, load_model, output_extension, parse_device

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray[data]')"
LOCAL = "local"                 # --ray without an address: start a Ray for this run
MAX_ATTEMPTS = 4                # per file: the first run plus retries after a worker died
MAX_TASKS = 10_000              # Ray tasks (blocks of files) per run
TEST_DELAY_ENV = "ESR_TEST_DELAY_S"
DEFAULT_CONNECT_TIMEOUT_S = 30.0  # joining a cluster: --ray-connect-timeout
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{8}-(.+)\Z", re.S)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--ray`` options of ``esr upscale``."""
    p.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS", type=ray_address,
                   help="upscale on Ray (pip install -e '.[ray]'): without ADDRESS a local Ray "
                        "is started for the run; with one (host:port, ray://host:port or auto) "
                        "the job joins that cluster. Put it after the inputs, or write --ray=ADDRESS")
    p.add_argument("--ray-connect-timeout", type=float, default=None, metavar="SECONDS",
                   help=f"with --ray ADDRESS: give up joining the cluster after this many seconds, with an "
                        f"error (default {DEFAULT_CONNECT_TIMEOUT_S:g})")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="with --ray: number of workers, each holding one model (default: one per "
                        "GPU with --device cuda, else CPUs / --ray-cpus-per-worker)")
    p.add_argument("--ray-cpus-per-worker", type=int, default=None, metavar="C",
                   help="with --ray: CPUs (and torch threads) per worker (default: 1 on GPU "
                        "workers; on CPU, CPUs / --ray-workers, or 1 without --ray-workers)")


def ray_address(value: str) -> str:
    """``--ray``'s value: ``--ray`` takes the next word, most likely an input when it is not an
    address: refused at parse time, before anything runs."""
    if value in (LOCAL, "auto") or (":" in value and not Path(value).exists()):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a Ray address (host:port, ray://host:port or auto); to start a local "
        "Ray, put --ray after the inputs, or write --ray=local")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra)
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray Data, which is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


def _check_options(args) -> None:
    timeout = getattr(args, "ray_connect_timeout", None)
    if timeout is not None and args.ray is None:
        raise UsageError("--ray-connect-timeout is an option of --ray")
    if timeout is not None and not 0 < timeout < float("inf"):
        raise UsageError(f"--ray-connect-timeout must be a positive number of seconds, got {timeout:g}")
    for name in ("ray_workers", "ray_cpus_per_worker"):
        value = getattr(args, name)
        if value is not None and args.ray is None:
            raise UsageError(f"--{name.replace('_', '-')} is an option of --ray")
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _checkpoint_bytes(args) -> tuple[bytes, int]:
    """The model's weights as a checkpoint file's bytes, and its scale: loaded here (same errors
    as the local path), shipped to the workers, which load them through the same
    ``common.load_model``. The scale names and checks the outputs here, as the local path does."""
    model = load(args.model)  # CPU float32: the reference weights, whatever runs them
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue(), int(getattr(model, "scale", 4))


def _check_device_here(args) -> None:
    """With a local Ray the workers run on this machine: the local path's device checks."""
    device = check_device(args.device)
    if getattr(args, "fused", False):
        check_backend(args.backend, device, args.dtype)


def _connect(ray, address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> bool:
    """Start or join Ray; True when this run started it (and must stop it). Joining a cluster
    gives up after ``timeout`` seconds with a UsageError (Ray itself would retry for many
    minutes): first a plain TCP connection to the address (nothing listening fails at once),
    then ``ray.init`` in a helper thread that is abandoned if it has not returned by then."""
    import logging

    if ray.is_initialized():  # a caller (a test, a notebook) already connected this process
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = dict(logging_level=logging.WARNING, log_to_driver=True, configure_logging=True)
    if address == LOCAL:
        ray.init(num_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1, include_dashboard=False, **common)
        return True
    deadline = time.monotonic() + timeout
    _check_reachable(address, timeout)
    result: dict = {}

    def init() -> None:
        try:
            ray.init(address=address, **common)
            result["done"] = True
        except BaseException as exc:  # noqa: BLE001  (raised again in the calling thread)
            result["error"] = exc

    # Ray warns that a thread other than the main one cannot set its SIGTERM handler: expected here.
    logging.getLogger("ray._private.worker").addFilter(
        lambda record: "SIGTERM handler is not set" not in record.getMessage())
    thread = threading.Thread(target=init, name="esr-ray-connect", daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0.1))
    if "error" in result:
        raise result["error"]
    if "done" not in result:
        raise UsageError(f"--ray {address}: no answer from a Ray cluster there within {timeout:g} s "
                         f"(--ray-connect-timeout); check the address and that Ray runs there "
                         "(ray start --head), or give it more time")
    return True


def _check_reachable(address: str, timeout: float) -> None:
    """A TCP connection to ``address`` (host:port or ray://host:port; "auto" is left to Ray) within
    ``timeout`` seconds, or a UsageError saying why not."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    host = host.strip("[]")  # [::1]:6379
    try:
        socket.create_connection((host, int(port)), timeout=max(timeout, 0.1)).close()
    except OSError as exc:
        why = (f"no answer within {timeout:g} s, --ray-connect-timeout" if isinstance(exc, TimeoutError)
               else exc.strerror or str(exc))
        raise UsageError(f"--ray {address}: cannot connect to {host}:{port} ({why}); is Ray running there "
                         "(ray start --head)? Check the address, or use --ray without one to start a local "
                         "Ray") from None


def _worker_plan(ray, args) -> tuple[int, int, int]:
    """(workers, CPUs per worker, GPUs per worker) for this cluster and these options."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
                    default=cpus)
    on_gpu = torch.device(args.device).type == "cuda"
    if on_gpu:
        if gpus < 1:
            raise UsageError(f"--device {args.device}: the Ray cluster has no GPU "
                             f"({cpus} CPUs); use --device cpu")
        per = args.ray_cpus_per_worker or 1
        workers = args.ray_workers or gpus
        _check_fits(args, workers, "GPU", 1, gpus)
        return workers, per, 1
    if args.ray_cpus_per_worker:
        per = args.ray_cpus_per_worker
    elif args.ray_workers:
        per = max(1, min(node_cpus, cpus // args.ray_workers))
    else:
        per = 1
    if per > node_cpus:
        raise UsageError(f"--ray-cpus-per-worker {per}: no node of the Ray cluster has that many "
                         f"CPUs (largest: {node_cpus})")
    workers = args.ray_workers or max(1, cpus // per)
    _check_fits(args, workers, "CPU", per, cpus)
    return workers, per, 0


def _check_fits(args, workers: int, kind: str, each: int, have: int) -> None:
    """A local Ray cannot grow: refuse a pool it cannot hold (Ray would wait for it forever).
    A cluster may be autoscaling: say so and let Ray wait for the resources."""
    if workers * each <= have:
        return
    msg = f"{workers} worker(s) x {each} {kind}(s) need {workers * each} {kind}s; the Ray cluster has {have}"
    if args.ray == LOCAL:
        raise UsageError(f"{msg}: lower --ray-workers or --ray-cpus-per-worker")
    print(f"note: {msg} now (waiting for an autoscaler to add them)", file=sys.stderr)


def _identity_str(path: Path) -> str:
    try:
        dev, ino = file_identity(path)
    except FileNotFoundError:
        return ""
    return f"{dev}:{ino}"


def _temp_files(outdir: Path, names: set[str]) -> set[Path]:
    """Temporary files (``outputs.write_atomically``) in ``outdir`` for the outputs ``names``."""
    found = set()
    try:
        entries = list(os.scandir(outdir))
    except FileNotFoundError:
        return found
    for e in entries:
        m = _TEMP_NAME.match(e.name)
        if m and m.group(1) in names:
            found.add(Path(e.path))
    return found


class Attempts:
    """How many times each file was started, across worker restarts (one small actor per run):
    a file that kills its worker every time is failed after MAX_ATTEMPTS, not retried forever."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def next(self, src: str) -> int:
        self.counts[src] = self.counts.get(src, 0) + 1
        return self.counts[src]


def _quiet_ray_data_logs() -> None:
    """Ray Data's per-run INFO lines (and its note that its progress bars are off) would
    interleave with the per-file report; its warnings and errors still show."""
    import logging

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= logging.WARNING and not record.getMessage().startswith(
                "Progress bars disabled")

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for name in ("ray.data", "ray"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _Filter) for f in handler.filters):
                handler.addFilter(_Filter())


class UpscaleWorker:
    """One Ray actor: one model, many files. Called with batches of rows {src, dst, before};
    returns one outcome per row (columns src, status, message, notes). Never raises for a file."""

    def __init__(self, options: dict, shared: list, threads: int):
        import ray  # here, not at the top: Ray is optional (and the driver checks it first)

        torch.set_num_threads(max(1, threads))
        if torch.device(options["device"]).type == "cuda":
            options = {**options, "device": "cuda"}  # the GPU Ray gave this worker: its only one
        self.options = argparse.Namespace(**options)
        self.attempts = shared[0]["attempts"]
        checkpoint = ray.get(shared[0]["checkpoint"])
        fd, path = tempfile.mkstemp(prefix="esr-ray-model-", suffix=".pth")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(checkpoint)
            model = load_model(path, options["device"], options["dtype"], options.get("fused", False),
                               options.get("backend", "auto"))
        finally:
            os.unlink(path)
        o = self.options
        self.upscaler = Upscaler(model, device=o.device, dtype=DTYPES[o.dtype], tile=o.tile,
                                 tile_overlap=o.tile_overlap, auto_tile=o.tile is None)
        self.delay = float(os.environ.get(TEST_DELAY_ENV) or 0)

    def __call__(self, batch: dict) -> dict:
        out = {"src": [], "status": [], "message": [], "notes": []}
        for src, dst, before in zip(batch["src"], batch["dst"], batch["before"]):
            o = self.run(Job(Path(str(src)), Path(str(dst))), str(before))
            out["src"].append(o.src)
            out["status"].append(o.status)
            out["message"].append(o.message)
            out["notes"].append(json.dumps(o.notes))
            if self.delay:
                time.sleep(self.delay)  # test hook (ESR_TEST_DELAY_S)
        return out

    def run(self, job: Job, before: str) -> Outcome:
        import ray

        # A retry after a worker died: the dead attempt may have moved the output into place.
        if _identity_str(job.dst) not in ("", before):
            return Outcome(str(job.src), DONE)
        attempt = ray.get(self.attempts.next.remote(str(job.src)))
        if attempt > MAX_ATTEMPTS:
            return Outcome(str(job.src), FAILED, f"{job.src}: its worker died on each of "
                           f"{MAX_ATTEMPTS} attempts (out of memory? a crash in a native library?)")
        notes: list[str] = []
        self.upscaler.notify = lambda msg: notes.append(f"{job.src}: {msg}")
        if is_video(job.src):
            outcome = upscale_video(self.upscaler, job, self.options)  # never raises: failures are outcomes
        else:
            o = self.options
            outcome = run_job(self.upscaler.upscale_image, job, o.overwrite, o.max_pixels)
        if outcome.status == SKIPPED and _identity_str(job.dst) not in ("", before):
            outcome = Outcome(outcome.src, DONE, notes=outcome.notes)  # see the module docstring
        outcome.notes = notes + list(outcome.notes)
        return outcome


def upscale_on_ray(args, files: list[Path], errors: list[str]) -> int:
    """``cmd_upscale`` from the input expansion on, with the files upscaled by Ray workers."""
    _check_options(args)
    ray = _import_ray()
    checkpoint, scale = _checkpoint_bytes(args)
    if args.ray == LOCAL:
        _check_device_here(args)
    else:
        parse_device(args.device)  # a malformed name fails here; availability on the workers
    outdir = Path(args.output)
    suffix = default_suffix(scale) if args.suffix is None else args.suffix
    jobs, earlier = plan_outputs(files, outdir, suffix, out_ext=output_extension, scale=scale)
    todo, decided = triage(jobs, earlier, overwrite=args.overwrite)
    timeout = getattr(args, "ray_connect_timeout", None) or DEFAULT_CONNECT_TIMEOUT_S
    started = _connect(ray, args.ray, timeout) if todo else False
    names = {job.dst.name for job in todo}
    temps_before: set[Path] | None = None
    try:
        plan = _worker_plan(ray, args) if todo else None
        created = not outdir.exists()
        outdir.mkdir(parents=True, exist_ok=True)
        temps_before = _temp_files(outdir, names)
        from tqdm import tqdm

        report = Report(write=lambda line: tqdm.write(line, file=sys.stderr))
        for e in errors:
            report.fail(e)
        for outcome in decided:
            report.add(outcome)
        if todo:
            problem, seen = _run(ray, args, todo, checkpoint, plan, report)
            if problem is not None and not seen:
                # Not one file ran: a setup error (the workers could not start), like the
                # local path's model or device errors: exit 2.
                print(f"error: the Ray workers could not run: {problem}", file=sys.stderr)
                if created and not any(outdir.iterdir()):
                    outdir.rmdir()  # leave nothing behind, as the local path would
                return 2
            for job in todo:
                if str(job.src) not in seen:
                    why = f"not upscaled: the Ray job failed ({problem or 'no result came back'})"
                    report.add(Outcome(str(job.src), FAILED, f"{job.src}: {why}"))
        return report.finish()
    finally:
        if started:
            ray.shutdown()
        if temps_before is not None:
            # Leftovers of killed workers: temporaries made during this run that nobody
            # removed (every worker of this run is done, or stopped, by now).
            for tmp in _temp_files(outdir, names) - temps_before:
                tmp.unlink(missing_ok=True)


def _run(ray, args, todo: list[Job], checkpoint: bytes, plan: tuple[int, int, int],
         report: Report) -> tuple[str | None, set[str]]:
    """Upscale ``todo`` on Ray, adding every outcome that comes back to ``report``. Returns
    (why the Ray job itself failed, or None; the sources whose outcome came back)."""
    from tqdm import tqdm

    workers, cpus, gpus = plan
    workers = min(workers, len(todo))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours below, with the outcome lines
    ctx.print_on_execution_start = False
    _quiet_ray_data_logs()
    rows = [{"src": str(j.src), "dst": str(j.dst), "before": _identity_str(j.dst)} for j in todo]
    env = {k: v for k, v in os.environ.items() if k.startswith("ESR_")}
    options = {k: v for k, v in vars(args).items() if k != "func"}
    # Held here for the whole run: a restarted worker fetches them again.
    shared = {"checkpoint": ray.put(checkpoint),
              "attempts": ray.remote(num_cpus=0)(Attempts).remote()}
    # One file per task up to MAX_TASKS files (finest balance and retries), then a few per task.
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_TASKS))
    # Ray's defaults for actor pools: a dead worker is restarted and its task retried
    # (Attempts caps the retries of one file).
    ds = ds.map_batches(
        UpscaleWorker, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs={"options": options, "shared": [shared], "threads": cpus},
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus or None,
        runtime_env={"env_vars": env} if env else None)
    where = f"{workers} worker(s), {cpus} CPU(s){' and 1 GPU' if gpus else ''} each"
    if not args.quiet:
        print(f"ray: {len(todo)} file(s) on {where}", file=sys.stderr)
    seen: set[str] = set()
    problem = None
    bar = tqdm(total=len(todo), desc="upscaling (ray)", unit="file",
               disable=args.quiet or None, file=sys.stderr)
    try:
        for row in ds.iter_rows():
            src = str(row["src"])
            seen.add(src)
            report.add(Outcome(src, str(row["status"]), str(row["message"]), json.loads(str(row["notes"]))))
            bar.update()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the Ray job itself failed (workers could not start, cluster lost)
        problem = _first_line(exc)
    finally:
        bar.close()
    return problem, seen


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]
