"""The files each trainer starts from: the shared header and reasons (``common``,
``reasons``), the escapers every value goes through (``escape``), the trl scripts' templates
(``templates/``, ``templating``) and launch (``launch``), and one renderer per target
(``trl``, ``grpo``, ``swift``, ``llamafactory``, ``axolotl``; each trainer parses what its
renderer writes with its own code in CI). The trainers in :mod:`vramplan.frameworks` call them;
nothing here imports a trainer or the emitter."""
