"""open_clip's trainer and clip_benchmark's evaluation through their own command lines, in a process of their own:
`python -m clipflow.launch {train,benchmark} [--model-config FILE] ARGS` (training under torchrun: one process per
GPU). --model-config first registers an open_clip model config file, for an architecture open_clip does not ship.

open_clip_train 3.3 reads tars with webdataset's tar_file_expander, which since webdataset 0.2.96 ends each tar
with an empty sample that open_clip_train cannot group (KeyError: 'fname', open_clip issue #935). The fix named
there is eof_value=None; it is applied here rather than pinning an older webdataset for the rest of clipflow.
open_clip_train also gives DistributedDataParallel `device_ids=[device]` on a CPU, which DDP refuses: a CPU
module takes none, so several processes (or nodes) without GPUs train too.
"""

import functools
import sys

import open_clip
import torch


class _DistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, device_ids=None, **kwargs):
        if device_ids and all(torch.device(device).type == "cpu" for device in device_ids):
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kwargs)


def train(argv: list[str]) -> None:
    import open_clip_train.data
    from open_clip_train.main import main
    from webdataset.tariterators import tar_file_expander

    open_clip_train.data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)
    torch.nn.parallel.DistributedDataParallel = _DistributedDataParallel
    main(argv)


def benchmark(argv: list[str]) -> None:
    from clip_benchmark.cli import main

    sys.argv = ["clip_benchmark", *argv]
    main()


def run(argv: list[str]) -> None:
    tool, argv = {"train": train, "benchmark": benchmark}[argv[0]], argv[1:]
    if argv[:1] == ["--model-config"]:
        open_clip.add_model_config(argv[1])
        argv = argv[2:]
    tool(argv)


if __name__ == "__main__":
    run(sys.argv[1:])
