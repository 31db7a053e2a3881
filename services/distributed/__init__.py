"""The distributed runtime: camera producers → Kafka → Faust workers → stores.

The same steps as the embedded line (``services/steps``), split across processes and machines:
producers admit frames (checks and the claim check) and publish ``Frame`` references and process
samples; Faust workers decode, join (every worker reads the process topic back), detect through the
inference port, finish, and publish ``Inspection`` records that a sink agent stores. See
``README.md`` beside this file.
"""
