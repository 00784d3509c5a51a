"""What a job of the SLURM resource test sees of its allocation (JSON on stdout)."""

import json
import os

KEYS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_CPUS_ON_NODE", "SLURM_CPUS_PER_TASK",
        "SLURM_CPUS_PER_GPU", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS", "SLURM_MEM_PER_NODE")
print(json.dumps({key: os.environ.get(key) for key in KEYS}, indent=1, sort_keys=True))
