"""Pure delivery-truth rules. Imports neither grpc nor SQLAlchemy (an import-linter contract), so
every rule is unit-testable in microseconds:

- message_machine.py / instance_machine.py  the two machines, each defined once per process
- domain.py      the vocabulary: states, reasons, records, outbound content
- preflight.py   may this instance send this kind now (no provider round-trip)
- validation.py  request rules (field violations); phone.py the phone rules (a session's phone;
  typed recipients and pairing phones through libphonenumber)
- errors.py      domain errors with their reason codes
- ports.py       the Provider and Store protocols and their result types, for the adapters
- changes.py, events.py, detection.py, ids.py  change-log vocabulary, provider events, the
  learned stall test, time-ordered ids
"""
