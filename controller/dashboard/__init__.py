"""The controller's read-only web dashboard (issue 12, item 6): one static page over a JSON
document of the controller's state, served on its own address (`dashboard_listen`) behind
the API's authentication (a client certificate of the installation's CA, or a service token).
"""

from controller.dashboard.server import DashboardServer as DashboardServer
