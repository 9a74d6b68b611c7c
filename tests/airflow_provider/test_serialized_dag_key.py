"""An LLM built in a DAG file with its API key in ``backend_params``: Airflow's serialized DAG
(what the DAG processor stores and the scheduler and UI read) holds no key, whether the LLM is
a CuratorOperator's ``llm`` or a PythonOperator's argument."""

from __future__ import annotations

import json
import pickle

from airflow_llms import Numbered

KEY = "sk-airflow-llm-key-77a3b2"


def test_the_serialized_dag_holds_no_key():
    import pendulum
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
    from airflow_moved import DagSerialization

    from airflow_provider import CuratorOperator

    llm = Numbered("gpt-4o-mini", backend_params={"api_key": KEY, "max_tokens": 64})
    with DAG("llm_key", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:
        CuratorOperator(task_id="generate", llm=llm, dataset=[{"n": 1}], working_dir="/tmp/x")
        PythonOperator(task_id="use", python_callable=print, op_args=[llm], op_kwargs={"llm": llm})
    serialized = json.dumps(DagSerialization.to_dict(dag), default=str)
    assert "generate" in serialized and "llm_key" in serialized
    assert KEY not in serialized
    assert KEY.encode() not in pickle.dumps(dag.get_task("generate").llm)
    assert dag.get_task("generate").llm.backend_params["api_key"].reveal() == KEY
