"""AWS tools for operators and tests: the moto sandbox, uploads as a facility, facility principals."""
