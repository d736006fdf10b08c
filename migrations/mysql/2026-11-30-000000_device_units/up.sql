-- A unit (one slave on a DTU's RS-485 bus) is a device of its own: its DTU and slave address.
ALTER TABLE devices ADD COLUMN parent VARCHAR(64) NULL;
ALTER TABLE devices ADD COLUMN unit SMALLINT NULL;
