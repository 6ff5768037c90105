-- One database per component (docker-compose.yml mounts this into the postgres image).
CREATE DATABASE mlflow;
CREATE DATABASE airflow;
CREATE DATABASE brewcast;
