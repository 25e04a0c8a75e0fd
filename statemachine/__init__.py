"""Pure delivery-truth rules: instance and message state machines, preflight, validation.

Imports neither grpc nor SQLAlchemy, so every rule is unit-testable in microseconds.
"""
