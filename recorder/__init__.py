"""recorder: the recording worker (`memharbor recorder`): claims `recordings/{sid}`, records calls to WAV, uploads.

See recorder/README.md for the audio path, the stop conditions, crash recovery and the simulation.
"""
