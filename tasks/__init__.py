"""Pipeline stages: pure numpy functions first, thin Prefect ``@task`` wrappers in ``tasks.prefect_tasks``."""
