"""Hydra's basic, joblib and submitit launchers with each job's task function in a child process
(`mmbench.launch.IsolatedJobs`): a job killed by a signal or the OOM killer is recorded as failed and the
sweep goes on. Chosen by conf/hydra/launcher/{sequential,parallel,local,slurm}.yaml.

The joblib and submitit launchers are optional (`pip install mmbench[sweep]`): without them only the
sequential launcher is defined, and Hydra's plugin scan stays quiet.
"""

from hydra._internal.core_plugins.basic_launcher import BasicLauncher

from mmbench import launch  # not its classes: Hydra's scan would list IsolatedJobs as a launcher


class IsolatedBasicLauncher(launch.IsolatedJobs, BasicLauncher):
    """hydra/launcher=sequential: jobs one after another."""


try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
except ImportError:
    pass
else:

    class IsolatedJoblibLauncher(launch.IsolatedJobs, JoblibLauncher):
        """hydra/launcher=parallel: `n_jobs` jobs at a time, each joblib worker waiting for its job's process; on a
        machine with GPUs each job sees one of them (`mmbench.launch.one_gpu_each`)."""

        one_gpu_each = True


try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:
    pass
else:

    class IsolatedLocalLauncher(launch.IsolatedJobs, LocalLauncher):
        """hydra/launcher=local: submitit's local executor, each submitit job waiting for its job's process."""

    class IsolatedSlurmLauncher(launch.IsolatedJobs, SlurmLauncher):
        """hydra/launcher=slurm: one sbatch job per job, each waiting for its job's process; SLURM's signal before
        the time limit stops that process before submitit requeues the job (mmbench/launch.py)."""
