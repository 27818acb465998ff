# Hydra configs, installed as the package ``synth.conf`` so ``python -m synth`` finds them anywhere.
