"""The klaviyo-dlt application layer: running the ``klaviyo_source`` library on a schedule.

``klaviyo_dlt.airflow`` builds the Airflow 3 DAGs (``pip install "klaviyo-dlt[airflow]"``);
``klaviyo_dlt.dag_config``, ``klaviyo_dlt.run_window`` and ``klaviyo_dlt.task_run`` hold what those
tasks do, free of Airflow imports so they run (and are tested) anywhere.
"""
