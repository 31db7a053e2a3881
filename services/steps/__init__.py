"""The steps of inspecting a frame, as plain functions over ``schemas/`` records.

    admit (admission, claim check, capture time, decode) ─► join (as-of process)
        ─► detect (an inference port scores a batch) ─► finish (defects, heat maps, records)
        ─► store (a group of records, one transaction)

No step knows which runtime calls it: the embedded line (``services/stream``), a Faust worker and
``POST /v1/inspect`` call the same functions, so a frame is admitted, scored and stored the same way
wherever it enters. A step that cannot use its input returns a :class:`~schemas.dead_letter.DeadLetter`
(or reports a per-record error) instead of raising, so that a worker never dies on bad input.
"""
