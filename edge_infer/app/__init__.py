"""The application: the composition root (`compose`, `startup`) and the daemon that runs what it wires.

The only package that knows every other one; nothing below imports it."""
