"""The pure core both backends call: losses and their registry, the Lp-Reg proxy, advantages, metric definitions and
how metrics reduce. Tensors in, tensors and numbers out; no I/O, no config files, no model."""
