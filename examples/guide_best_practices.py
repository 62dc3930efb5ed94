"""The Session Management Guide's best-practices example, run against nexusd.

Only the imports differ from the guide: `Nexus` comes from `nexus_client`, and
`SessionBestPractices` from `nexus_client.guide`, where each practice is
library behaviour (the optimal starting channel, `Nexus.continue_session`
for an expired session, several endpoints for an unavailable one, `retry`
with `Backoff`). Run it as examples/guide_analytics.py.
"""

from nexus_client import Nexus
from nexus_client.guide import SessionBestPractices

app = Nexus()

# Usage examples
best_practices = SessionBestPractices()

# Create optimal session
optimal_session = best_practices.create_optimal_session(app, {
    "task_type": "data_analysis",
    "experience_level": "expert",
    "user_id": "analyst_123"
})

print(f"Optimal session created: {optimal_session}")

# Optimize performance
optimization_result = best_practices.optimize_session_performance(optimal_session, app)
print(f"Performance optimization: {optimization_result}")

# Handle errors
error_handling = best_practices.handle_session_errors(optimal_session, {
    "error_type": "session_expired",
    "context": {"preserve_workflow_state": True}
})
print(f"Error handling strategy: {error_handling}")
app.close()
