"""Open a trained run folder: its options and its model with a checkpoint's weights."""

import os

from nenya.checkpoint import load_checkpoint, load_model_state
from nenya.errors import NenyaError
from nenya.methods import get_method
from nenya.params import option_preprocess, validate
from nenya.run_folder import read_run_options


def load_run(folder: str, checkpoint: str = "best"):
    """(options, method, model in eval mode on the CPU) of a run; checkpoint is 'best', 'last' or a file name."""
    options = read_run_options(folder)
    if options is None:
        raise NenyaError(f"{folder} is not a nenya run folder (it has no opts.json)")
    opt = option_preprocess(validate(options, source=os.path.join(folder, "opts.json")))
    name = checkpoint if checkpoint.endswith(".pth") else f"{checkpoint}.pth"
    path = os.path.join(folder, name)
    if checkpoint == "best" and not os.path.isfile(path):
        path = os.path.join(folder, "last.pth")
    method = get_method(opt)
    model = method.build_model()
    load_model_state(model, load_checkpoint(path)["model"], path)
    return opt, method, model.eval()
