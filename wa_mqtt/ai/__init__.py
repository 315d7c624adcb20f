"""AI auto-replies (issue 16): an `auto_reply` rule with `ai:` answers with what a model or Home
Assistant's Assist says. `settings` (the config models), `openai` and `home_assistant` (one client per
provider), `memory` (chat history and conversation ids on disk), `responder` (one answer, end to end).
"""
