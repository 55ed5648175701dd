"""Library code behind the operations commands: hugepages, devices, bind/unbind, top and gen."""
