"""The controller's side of pi2pi (natpi, where Ansible and fab run): the site
from the inventory (site.py), commands on the Pis (remote.py), a call's order
(call.py), the record of calls (store.py) and their figures (report.py).
fabfile.py is a page of tasks over this package."""
