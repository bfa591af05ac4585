"""What the DAG and the plugin share, on Airflow's side of the line (the library never imports Airflow).

- `stores`: where the catalog and Milvus are (the Airflow connections first, then `RECSYS_*`), for
  tasks, the plugin and the API it mounts alike.
- `tasks`: a pipeline step as an Airflow task (retries by kind, the run record, error mapping).
- `alerts`: the failure notifier (e-mail through Airflow's SMTP provider), off unless configured.
- `auth`: the plugin apps accept only users the auth manager lets read the DAG.

Everything heavy is imported inside functions: the DAG processor imports this at parse time.
"""
