"""klaviyo-dlt's Airflow 3 DAGs: copy this file into your Airflow ``dags/`` folder.

The DAGs ship in the package (``pip install "klaviyo-dlt[airflow]"``, module ``klaviyo_dlt.airflow``):

* ``klaviyo_dlt`` — one Klaviyo account, one task per resource group, then the reverse sync;
* ``klaviyo_dlt_all_connections`` — every Maton klaviyo connection, one mapped task each.

Scheduled runs sync incrementally from the watermarks stored in the destination; backfills
(``airflow backfill create --dag-id klaviyo_dlt --from-date ... --to-date ...``) re-read exactly
their data intervals.  Settings: ``KLAVIYO_DLT_*`` environment variables of the Airflow workers and
dlt's ``.dlt/config.toml`` / ``.dlt/secrets.toml`` in the DAGs folder (see docs/deployment.md).
"""

from klaviyo_dlt.airflow import klaviyo_dlt_all_connections_dag, klaviyo_dlt_dag

klaviyo_dlt = klaviyo_dlt_dag()
klaviyo_dlt_all_connections = klaviyo_dlt_all_connections_dag()
