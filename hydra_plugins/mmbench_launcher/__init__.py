"""mmbench's Hydra launchers (launchers.py): Hydra's own, with every job in a process of its own (mmbench/launch.py).

Hydra instantiates launchers only from the `hydra_plugins` package, hence this package beside `mmbench`.
"""
