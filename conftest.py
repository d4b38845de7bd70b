"""A checkout's hook into the study's pytest plugin, elr/pytest_plugin.py (options, fixtures, the report).

An installed elr loads that plugin through its `pytest11` entry point, also named "elr.pytest_plugin";
pytest imports a plugin once per name, so naming it here as well never registers it twice. This line is for
a checkout whose elr is not installed with the entry point (an older install, PYTHONPATH=., or plugin
autoload disabled). The plugin does nothing unless the command line names the study (experiments/).
"""

pytest_plugins = ["elr.pytest_plugin"]
