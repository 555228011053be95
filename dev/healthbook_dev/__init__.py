"""The workshop around the health-book pipeline: the `healthbook` command, visit and hostile-input generators,
fake VNeID and population services, the development PKI, the moto sandbox, the demos and the annex derivation.

Never shipped: the Lambda layer holds the production package `healthbook` alone (infra/layer/build.py, and a
test that fails if a shipped module imports this package, moto or http.server).
"""
