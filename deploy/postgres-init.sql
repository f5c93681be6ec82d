-- Run once by the postgres image on an empty volume: MLflow gets a database of its own.
CREATE DATABASE mlflow OWNER claas;
