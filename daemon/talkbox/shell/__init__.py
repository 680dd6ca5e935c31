"""The daemon's shell: the process (service), the wiring of adapters to the core (app), and its
ties to the system (systemd, the control socket, state hooks, start-up signals). It carries out
what the core decides and holds no conversation state of its own."""
