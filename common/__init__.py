"""Code shared by every package of the toolkit: the data loader layer, the backbone registry,
the one-line usage errors that CLIs turn into exit code 2, and the dataclass-to-argparse bridge."""
