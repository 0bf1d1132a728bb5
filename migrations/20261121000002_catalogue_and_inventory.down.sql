DROP TABLE allocation_items;
DROP TABLE inventories;
DROP TABLE allocations;
DROP TABLE product_denominations;
DROP TABLE products;
