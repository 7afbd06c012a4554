"""Distributed training through torchrun: ``python -m nenya.launch --nproc_per_node N OPTS [key=value ...] [--resume]``.

Several nodes: add ``--nnodes M --node_rank R --rdzv_endpoint HOST:PORT`` (the same command on every node,
each with its own ``--node_rank``). The options are checked here first, so a mistake is one line before
any process starts; then ``torch.distributed.run`` (torchrun) starts the processes, each running
``python -m nenya.train`` with the same arguments. ``torchrun -m nenya.train OPTS`` works the same.
"""

import sys

from nenya.errors import NenyaError, run_cli
from nenya.params import get_options, parse_overrides


def torchrun_arguments(args) -> list[str]:
    """The torchrun command line for the parsed launcher arguments."""
    command = [f"--nproc_per_node={args.nproc_per_node}", f"--nnodes={args.nnodes}"]
    if args.nnodes == 1 and not args.rdzv_endpoint:
        command.append("--standalone")
    else:
        if not args.rdzv_endpoint:
            raise NenyaError("--nnodes > 1 needs --rdzv_endpoint HOST:PORT (the node with --node_rank 0)")
        command += [f"--node_rank={args.node_rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={args.rdzv_endpoint}"]
    command += ["-m", "nenya.train", args.opts, *args.overrides]
    return command + [flag for flag, on in (("--resume", args.resume), ("--debug", args.debug)) if on]


def launch(arguments: list[str]) -> None:
    """Run torchrun with ``arguments``; a failed process ends the launcher with its exit status.

    Each process prints its own ``nenya: error:`` line, so the launcher adds a line only for a failure that
    is not a user error (exit 2).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(arguments))
    except ChildFailedError as err:
        codes = sorted({failure.exitcode for failure in err.failures.values()})
        if codes != [2]:
            ranks = ", ".join(str(rank) for rank in sorted(err.failures))
            print(f"nenya: error: process(es) {ranks} stopped with exit status {codes}; see their output above",
                  file=sys.stderr)
        raise SystemExit(2 if codes == [2] else codes[-1] if codes[-1] > 0 else 1) from None


def cli(argv=None) -> int:
    """Command-line entry point of nenya.launch."""
    def add_arguments(parser):
        parser.add_argument("--nproc_per_node", type=int, required=True, help="processes (GPUs) on this node")
        parser.add_argument("--nnodes", type=int, default=1, help="nodes taking part (default 1)")
        parser.add_argument("--node_rank", type=int, default=0, help="this node's rank, 0 .. nnodes - 1")
        parser.add_argument("--rdzv_endpoint", default="", help="HOST:PORT of the rendezvous (several nodes)")
        parser.add_argument("opts", help="JSON opts file")
        parser.add_argument("overrides", nargs="*", help="key=value overrides, values as JSON (epochs=3)")
        parser.add_argument("--resume", action="store_true", help="continue the run from its last.pth")
        parser.add_argument("--debug", action="store_true", help="no workers, a log line every step")

    def run(args):
        if args.nproc_per_node < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
            raise NenyaError(f"--nproc_per_node {args.nproc_per_node}, --nnodes {args.nnodes}, --node_rank "
                             f"{args.node_rank}: need at least one process and node, and 0 <= node_rank < nnodes")
        get_options(args.opts, parse_overrides(args.overrides))  # one clear line for bad options, before torchrun
        launch(torchrun_arguments(args))

    return run_cli("nenya.launch", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(cli())
