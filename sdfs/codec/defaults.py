"""The default models, in a module without torch: the command line names
them in its help, and every `sdfs` command would otherwise pay torch's import
(about 2 s) before it starts."""

DEFAULT_MODEL = "stabilityai/sd-vae-ft-mse"
DEFAULT_FAST_DECODER = "madebyollin/taesd"
