"""Hydra's config folder of lpreg (``@hydra.main(config_path="pkg://lpreg.conf")``): a package, so that an installed
lpreg finds it."""
