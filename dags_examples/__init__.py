"""Example nightly builds: shared generators, an in-process demo, Airflow DAGs and Prefect flows."""
