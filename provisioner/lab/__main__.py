"""``python -m provisioner.lab up|status|down|deploy`` until ``coopctl`` registers them."""

from provisioner.lab.cli import main

main()
